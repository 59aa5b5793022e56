"""``dinat_backbone.engine.cli``: the ``--dilations`` reading, ``--trust-checkpoint`` and the
output path checks the tools run at start-up; ``zoo_arch_name`` and ``default_dilations``, with
which the tools resolve a model."""
import argparse
import dataclasses
import json
import os

import pytest

from dinat_backbone.weights import variant_name, zoo_arch_name
from dinat_backbone.engine.cli import (add_trust_checkpoint_flag, check_writable_dir,
                                       check_writable_file, parse_dilations)
from dinat_backbone.weights.zoo import IMAGENET_CHECKPOINTS, default_dilations
from dinat_backbone.models import DiNAT


def test_parse_dilations_decodes_json_lists_and_keeps_preset_names():
    assert parse_dilations(None) is None
    assert parse_dilations('ade20k') == 'ade20k'
    assert parse_dilations(' [[1, 8], [2]]') == [[1, 8], [2]]
    with pytest.raises(json.JSONDecodeError):
        parse_dilations('[[1, 8]')


def test_trust_checkpoint_flag_is_off_by_default_and_names_the_file():
    parser = argparse.ArgumentParser()
    add_trust_checkpoint_flag(parser, 'SRC')
    assert parser.parse_args([]).trust_checkpoint is False
    assert parser.parse_args(['--trust-checkpoint']).trust_checkpoint is True
    assert 'unpickle SRC fully' in ' '.join(parser.format_help().split())


def test_writable_dir_and_file_checks(tmp_path):
    check_writable_dir(str(tmp_path / 'new' / 'deeper'), '--out')  # creatable: no error
    check_writable_file(str(tmp_path / 'new' / 'model.onnx'), '--out')
    blocker = tmp_path / 'file.txt'
    blocker.write_text('')
    with pytest.raises(ValueError, match=r"--out: .*file\.txt' is a file, not a directory"):
        check_writable_dir(str(blocker / 'sub'), '--out')
    with pytest.raises(ValueError, match='is a directory; give a file name'):
        check_writable_file(str(tmp_path), '--out')
    assert not (tmp_path / 'new').exists()  # nothing created
    if os.geteuid() != 0:  # root writes anywhere
        blocker.chmod(0o444)
        with pytest.raises(ValueError, match='exists and is read-only'):
            check_writable_file(str(blocker), '--out')


def test_zoo_arch_name_and_variant_name():
    zoo = DiNAT.arch_zoo
    for name, arch in zoo.items():
        assert zoo_arch_name(dict(arch, kernel_size=7), zoo) == name
    # mini and tiny differ only in depths; base has layer scale
    assert zoo_arch_name(dict(zoo['tiny'], depths=[3, 4, 6, 5]), zoo) == 'mini'
    assert zoo_arch_name(dict(zoo['base'], layer_scale=None), zoo) is None
    assert zoo_arch_name(dict(zoo['small'], mlp_ratio=4.), zoo) is None
    assert zoo_arch_name(dict(zoo['small'], num_heads=None), zoo) is None  # not known: no guess
    assert variant_name(zoo['small'], zoo) == 'DiNAT-Small'
    assert variant_name(dict(zoo['small'], embed_dims=80), zoo) is None


def test_default_dilations_follow_the_zoo_entry(monkeypatch):
    entry = IMAGENET_CHECKPOINTS['dinat_mini.in1k']
    monkeypatch.setitem(IMAGENET_CHECKPOINTS, 'dinat_mini.coco_test',
                        dataclasses.replace(entry, name='dinat_mini.coco_test', dilations='coco'))
    assert default_dilations('dinat_mini.coco_test') == 'coco'
    assert default_dilations('dinat_mini.in1k') == 'imagenet'
    assert default_dilations('work_dirs/dinat_mini.coco_test') == 'imagenet'  # a file path
    assert default_dilations(None) == 'imagenet'
