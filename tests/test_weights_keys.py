"""The one strict key comparison (``weights.keys``) behind backbone and task-checkpoint loading."""
import torch

from dinat_backbone.weights import diff_state_dict


def test_diff_state_dict_names_every_difference():
    """The one strict comparison behind backbone and task-checkpoint loading."""
    target = {'a.weight': torch.zeros(4, 13, 13), 'norm0.weight': torch.zeros(2),
              'b.bias': torch.zeros(3), 'c': torch.zeros(1)}
    state_dict = {'a.weight': torch.zeros(4, 11, 11), 'b.bias': torch.zeros(3),
                  'extra': torch.zeros(1)}
    diff = diff_state_dict(state_dict, target, may_be_missing=lambda k: k.startswith('norm'))
    assert diff and (diff.missing, diff.allowed_missing, diff.unexpected) == (
        ['c'], ['norm0.weight'], ['extra'])
    assert diff.details() == ('shape mismatch (checkpoint vs model): a.weight: (4, 11, 11) vs '
                              '(4, 13, 13); missing from the checkpoint: c; unexpected in the '
                              'checkpoint: extra')
    assert not diff_state_dict({'c': torch.zeros(1)}, {'c': torch.ones(1)})
