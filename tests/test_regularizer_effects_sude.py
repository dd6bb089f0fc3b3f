"""SuDe's part of tests/test_regularizer_effects.py (its own module, so that xdist trains it beside
ClassDiffusion): on one photo of a held-out face, DreamBooth + SuDe costs no compositions or identity."""

import pytest
from test_regularizer_effects import _effects

pytestmark = pytest.mark.effect


@pytest.fixture(scope="module")
def sude(tmp_path_factory):
    return _effects("sude", tmp_path_factory)


def test_sude_costs_no_compositions_or_identity(sude):
    """One photo of a held-out face, DreamBooth vs DreamBooth + SuDe (weight 5). 5 seeds: composition 0.981 ->
    0.959 (delta -0.022, CI -0.060 to +0.016; sd 0.031, 3-seed se 0.018), identity cosine 0.927 -> 0.938
    (+0.011, CI -0.028 to +0.050; sd 0.031); every image a face in both arms."""
    assert sude["composition"].mean >= -0.08, sude["composition"]
    assert sude["identity"].mean >= -0.06, sude["identity"]
    assert sude["category"].mean >= -0.05, sude["category"]
