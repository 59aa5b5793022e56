# Alias: exactly upernet_dinat-t_8xb2-160k_ade20k-512x512.py (UPerNet + DiNAT-Tiny, ADE20K).
_base_ = ['./upernet_dinat-t_8xb2-160k_ade20k-512x512.py']
