"""Whole ImageNet classifiers: ``DiNATClassifier`` against the reference's own logits, loading
both published layouts, and ``tools/classify.py`` (``apis.classification``)."""
import json
from pathlib import Path

import pytest
import torch

from dinat_backbone.apis.classification import read_eval_image
from dinat_backbone.models.classifier import DiNATClassifier

from helpers import DATA_DIR, load_tool
from tiny_checkpoints import (DILATIONS, KERNEL, assert_same_tensors, expected_from_hf, hf_state,
                              tiny_arch)

classify = load_tool('classify')


def reference_classifier(fixture: dict) -> DiNATClassifier:
    cfg = fixture['config']
    arch = dict(embed_dims=int(cfg['embed_dim']), depths=fixture['depths'].tolist(),
                num_heads=fixture['num_heads'].tolist(), mlp_ratio=float(cfg['mlp_ratio']),
                layer_scale=float(cfg['layer_scale']))
    return DiNATClassifier(arch=arch, num_classes=int(cfg['num_classes']),
                           kernel_size=int(cfg['kernel_size']),
                           dilations=[d.tolist() for d in fixture['dilations']])


def test_classifier_reproduces_the_reference_logits(tmp_path):
    """The original SHI-Labs classifier's own output (tests/data), from its checkpoint."""
    fixture = torch.load(DATA_DIR / 'reference_dinat_small_random.pt', weights_only=True)
    path = tmp_path / 'reference.pth'
    torch.save({'model': fixture['state_dict']}, path)
    model = reference_classifier(fixture).double().eval()
    report = model.load_checkpoint(str(path))
    assert report.missing_output_norms == [] and report.dropped_classifier == []
    assert len(report.loaded) == len(fixture['state_dict'])
    with torch.no_grad():
        logits = model(fixture['input'])
    torch.testing.assert_close(logits, fixture['logits'], rtol=0, atol=1e-10)


def tiny_classifier(**kwargs) -> DiNATClassifier:
    return DiNATClassifier(arch=tiny_arch(), num_classes=10, kernel_size=KERNEL,
                           dilations=DILATIONS, **kwargs)


def test_classifier_loads_both_published_layouts_whole(hf_dir, original_files):
    hf = hf_state(hf_dir, 'cls')
    states = []
    for source in (hf_dir / 'cls' / 'pytorch_model.bin', original_files['state_dict']):
        model = tiny_classifier(init_cfg=dict(type='Pretrained', checkpoint=str(source)))
        model.init_weights()
        states.append(model.state_dict())
    assert_same_tensors(states[0], states[1])
    state = states[0]
    assert torch.equal(state['backbone.norm3.weight'], hf['dinat.layernorm.weight'])
    assert torch.equal(state['head.weight'], hf['classifier.weight'])
    assert torch.equal(state['head.bias'], hf['classifier.bias'])
    for key, value in expected_from_hf(hf, False).items():
        assert torch.equal(state['backbone.' + key], value), key


def test_classifier_refuses_what_is_not_a_matching_classifier(hf_dir):
    with pytest.raises(KeyError, match=r'not a whole classifier .*no head\.weight, head\.bias'):
        tiny_classifier().load_checkpoint(str(hf_dir / 'model' / 'pytorch_model.bin'))
    with pytest.raises(KeyError, match=r"output norms of a dense-prediction backbone "
                                       r"\(\['norm3\.bias', 'norm3\.weight'\]\)"):
        tiny_classifier().load_checkpoint(str(hf_dir / 'backbone_default' / 'model.safetensors'))
    model = DiNATClassifier(arch=tiny_arch(), num_classes=1000, kernel_size=KERNEL,
                            dilations=DILATIONS)
    with pytest.raises(ValueError, match='its head has 10 classes and 128 features, the model '
                                         '1000 and 128'):
        model.load_checkpoint(str(hf_dir / 'cls' / 'pytorch_model.bin'))


def _write_image(path: Path) -> None:
    from PIL import Image
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (150, 170, 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


def test_classify_tool_prints_the_top5(tmp_path, capsys):
    fixture = torch.load(DATA_DIR / 'reference_dinat_small_random.pt', weights_only=True)
    checkpoint, image, labels = tmp_path / 'ref.pth', tmp_path / 'img.png', tmp_path / 'labels.txt'
    torch.save(fixture['state_dict'], checkpoint)
    _write_image(image)
    names = [f'name-{i}' for i in range(10)]
    labels.write_text('\n'.join(names) + '\n')
    dilations = json.dumps([d.tolist() for d in fixture['dilations']])
    assert classify.main([str(image), '--checkpoint', str(checkpoint), '--size', '96',
                          '--dilations', dilations, '--labels', str(labels)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-5:]

    model = reference_classifier(fixture).eval()
    model.load_checkpoint(str(checkpoint))
    x = read_eval_image(str(image), 96)
    assert x.shape == (1, 3, 96, 96)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    scores, indices = probs.topk(5)
    assert lines == [f'{r}. {names[i]} (index {i}): {s:.4f}'
                     for r, (s, i) in enumerate(zip(scores.tolist(), indices.tolist()), 1)]


def test_classify_tool_reads_labels_of_a_hugging_face_snapshot(hf_dir, tmp_path, capsys):
    image = tmp_path / 'img.png'
    _write_image(image)
    assert classify.main([str(image), '--checkpoint', str(hf_dir / 'cls'), '--size', '64',
                          '--dilations', json.dumps(DILATIONS), '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split(' (index')[0] for line in lines] == \
        [f'{r}. LABEL_{line.split("(index ")[1].split(")")[0]}' for r, line in
         enumerate(lines, 1)]


def test_classify_tool_names_imagenet_classes_by_default(tmp_path, capsys):
    """A 1000-class head that favours index 281 prints ImageNet's name for it, "tabby, tabby cat"
    (the DiNAT model card's answer for COCO image 39769 with the real Mini weights)."""
    model = DiNATClassifier(arch=tiny_arch(), num_classes=1000, kernel_size=KERNEL,
                            dilations=DILATIONS)
    model.init_weights()
    state = {k.replace('backbone.norm3.', 'norm.').replace('backbone.', ''): v
             for k, v in model.state_dict().items()}
    state['head.weight'] = torch.zeros_like(state['head.weight'])
    state['head.bias'] = torch.zeros(1000).index_fill_(0, torch.tensor([281, 282, 285]), 5.0)
    state['head.bias'][281] = 9.0
    checkpoint, image = tmp_path / 'cat.pth', tmp_path / 'img.png'
    torch.save({'model': state}, checkpoint)
    _write_image(image)
    assert classify.main([str(image), '--checkpoint', str(checkpoint), '--size', '64',
                          '--dilations', json.dumps(DILATIONS), '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert lines[0].startswith('1. tabby, tabby cat (index 281)')
    assert {line.split(' (index')[0][3:] for line in lines[1:]} == {'tiger cat', 'Egyptian cat'}
