"""Fast checks of the Python fixture tooling and the committed fixtures.

Run: .venv-tools/bin/python -m pytest tools/tests -q
(numpy is required; tests needing safetensors/torch/transformers skip without them)
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parent.parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import hashinit  # noqa: E402

MODELS = REPO / "tests" / "fixtures" / "models"
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "text_encoder"


def test_hashinit_reference_values():
    assert hashinit.fnv1a64("a.weight") == 0xDE73AE9D17C13F4E
    t = hashinit.hash_init_tensor("a.weight", [2, 3])
    assert t.dtype == np.float32 and t.shape == (2, 3)
    bits = t.reshape(-1)[:4].view(np.uint32).tolist()
    assert bits == [0x3E49A39B, 0xBE406388, 0x3BBBE434, 0x3F0040DC]
    ln = hashinit.hash_init_tensor("text_model.final_layer_norm.weight", [4])
    assert ln.view(np.uint32).tolist() == [0x3F83B41C, 0x3F7DE35D, 0x3F813D27, 0x3F72AF1A]


def test_hashinit_rank1_linear_is_error():
    with pytest.raises(ValueError):
        hashinit.hash_init_tensor("logit_scale", [])


@pytest.mark.parametrize("name", ["sd1_tiny", "sd2_tiny", "odd_tiny", "te_h48_gelu", "te_h40_qgelu", "vit_l14_hashinit"])
def test_golden_layout(name):
    st = pytest.importorskip("safetensors")
    with st.safe_open(str(GOLDEN / f"{name}.safetensors"), "np") as f:
        meta = f.metadata()
        cfg = json.loads(meta["config"])
        ids = f.get_tensor("input_ids")
        lhs = f.get_tensor("last_hidden_state")
        skip2 = f.get_tensor("skip2")
        pooled = f.get_tensor("pooler_output")
    b = ids.shape[0]
    assert ids.dtype == np.int32 and ids.shape == (b, 77)
    assert lhs.dtype == np.float32 and lhs.shape == (b, 77, cfg["hidden_size"]) == skip2.shape
    eos_pos = (ids == cfg["eos_token_id"]).argmax(-1)
    assert np.array_equal(pooled, lhs[np.arange(b), eos_pos])
    assert float(np.abs(lhs).max()) == json.loads(meta["max_abs"])["last_hidden_state"]


@pytest.mark.parametrize("name", ["sd1-tiny", "sd2-tiny", "odd-tiny"])
def test_single_file_equals_diffusers_dir(name):
    pytest.importorskip("torch")
    from safetensors.torch import load_file

    import ldm_layout

    ldm = load_file(str(MODELS / f"{name}.safetensors"))
    for sub, fn, wname in [("unet", ldm_layout.unet_from_ldm, "diffusion_pytorch_model"),
                           ("vae", ldm_layout.vae_from_ldm, "diffusion_pytorch_model")]:
        ref = load_file(str(MODELS / name / sub / f"{wname}.safetensors"))
        cfg = json.loads((MODELS / name / sub / "config.json").read_text())
        back = fn(ldm, cfg, diffusers_keys=ref.keys())
        assert back.keys() == ref.keys()
        for k in ref:
            assert back[k].dtype.is_floating_point and (back[k].float() == ref[k]).all(), k
    ref = load_file(str(MODELS / name / "text_encoder" / "model.safetensors"))
    tcfg = json.loads((MODELS / name / "text_encoder" / "config.json").read_text())
    if name in ("sd1-tiny", "odd-tiny"):
        back = ldm_layout.clip_from_ldm(ldm)
    else:
        back = ldm_layout.openclip_from_ldm(ldm, tcfg["num_hidden_layers"])
    assert back.keys() == ref.keys()
    for k in ref:
        assert (back[k].float() == ref[k]).all(), k
