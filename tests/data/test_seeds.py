"""The offline seed family: configuration, training, cache and corruption handling."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from tl_universality.core.errors import CorruptCacheError
from tl_universality.data import seeds
from tl_universality.data.seeds import (
    PRESETS,
    SeedFamilyConfig,
    family_folder,
    load_seed_family,
    load_seed_model,
    train_seed_family,
)
from tl_universality.data.seeds import family as family_module

# No progress bars; one thread (see the tiny_family fixture in conftest.py).
QUIET = {"progress": False, "num_threads": 1}


@pytest.fixture
def family_copy(tiny_family, tmp_path):
    """A private copy of the tiny family's folder, to damage; returns (cache_dir, folder)."""
    folder = tmp_path / tiny_family.folder.name
    shutil.copytree(tiny_family.folder, folder)
    return tmp_path, folder


@pytest.fixture
def count_training(monkeypatch):
    """Counts the seeds that get trained (wrapping the real training function)."""
    calls: list[int] = []
    real = family_module.train_one

    def counting(config, seed, *args, **kwargs):
        calls.append(seed)
        return real(config, seed, *args, **kwargs)

    monkeypatch.setattr(family_module, "train_one", counting)
    return calls


@pytest.fixture
def fake_training(monkeypatch):
    """Replaces training by an untrained model (for tests about the cache, not about training)."""
    calls: list[int] = []

    def fake(config, seed, tokenizer, train, held, order, *, progress, device, **checkpointing):
        from transformer_lens import HookedTransformer

        calls.append(seed)
        cfg = config.model_config(seed, len(tokenizer), device)
        model = HookedTransformer(cfg, tokenizer=tokenizer)
        for step in checkpointing.get("checkpoints", ()):
            checkpointing["on_checkpoint"](step, model)
        record = {"seed": seed, "held_out_loss": 9.0, "train_seconds": 0.0}
        return model, record

    monkeypatch.setattr(family_module, "train_one", fake)
    return calls


def logits(family, tokens):
    with torch.no_grad():
        return [m(tokens) for m in family.models]


# -- configuration -----------------------------------------------------------------------------


def test_config_round_trips_through_json():
    for config in PRESETS.values():
        data = json.loads(json.dumps(config.to_dict()))
        assert SeedFamilyConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="Unknown"):
        SeedFamilyConfig.from_dict({"n_layer": 2})


@pytest.mark.parametrize(
    "bad",
    [
        {"d_model": 0},
        {"n_ctx": 1},
        {"vocab_size": 100},
        {"act_fn": "tanh"},
        {"normalization_type": "RMS"},
        {"warmup": 100, "steps": 100},
        {"lr": 0.0},
        {"betas": (0.9, 1.5)},
        {"grad_clip": 0.0},
        {"seeds": ()},
        {"seeds": (1, 1)},
        {"held_out": 0.0},
        {"name": "a/b"},
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SeedFamilyConfig(**bad)


def test_tiny_preset_is_small():
    tiny = PRESETS["tiny"]
    assert len(tiny.seeds) == 3 and tiny.n_params_estimate < 100_000
    assert tiny.steps * tiny.batch_size <= 2000


def test_batch_order_is_shared_and_covers_epochs():
    config = PRESETS["tiny"].replace(steps=10, batch_size=5, warmup=1)
    order = seeds.batch_order(config, n_sequences=20)
    assert order.shape == (10, 5)
    # Two and a half epochs: each epoch is a permutation of all sequences.
    assert sorted(order.flatten()[:20].tolist()) == list(range(20))
    assert torch.equal(order, seeds.batch_order(config.replace(seeds=(7, 8)), 20))


def test_lr_schedule_warms_up_then_decays():
    config = PRESETS["tiny"].replace(steps=100, warmup=10, min_lr_ratio=0.1)
    f = seeds.lr_lambda(config)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


# -- the trained family --------------------------------------------------------------------------


def test_tiny_family(tiny_family):
    fam = tiny_family
    config = PRESETS["tiny"]
    assert fam.config == config and len(fam.models) == len(config.seeds) == 3
    assert [m.cfg.seed for m in fam.models] == list(config.seeds)
    for model in fam.models:
        assert model.cfg.d_vocab == len(fam.tokenizer)
        assert model.cfg.n_ctx == config.n_ctx and model.cfg.n_layers == config.n_layers
        assert model.tokenizer is not None
    # Seeds differ only in initialisation: different weights, similar quality, better than chance.
    w = [m.blocks[0].mlp.W_in for m in fam.models]
    assert not torch.allclose(w[0], w[1])
    assert all(math.isfinite(x) and x < math.log(len(fam.tokenizer)) for x in fam.held_out_loss)
    assert max(fam.held_out_loss) - min(fam.held_out_loss) < 0.3
    assert len(fam.train_seconds) == 3 and all(t > 0 for t in fam.train_seconds)
    info = json.loads((fam.folder / "family.json").read_text())
    assert info["n_held_out_tokens"] > 10_000 and info["vocab_size"] == len(fam.tokenizer)
    assert [s["held_out_loss"] for s in info["seeds"]] == fam.held_out_loss


def test_family_tokens(tiny_family):
    held = tiny_family.held_out_tokens()
    assert held.seq_len == PRESETS["tiny"].n_ctx
    batch = next(held.batches(8))
    assert (batch[:, 0] == tiny_family.tokenizer.bos_token_id).all()
    # The held-out loss was measured on exactly these sequences.
    loss = seeds.mean_loss(tiny_family.models[0], held.to_tensor())
    assert loss == pytest.approx(tiny_family.held_out_loss[0], abs=1e-4)
    train = tiny_family.train_tokens().limit(PRESETS["tiny"].n_ctx * 4).to_tensor()
    assert train.shape == (4, PRESETS["tiny"].n_ctx)
    assert tiny_family.models[0].to_tokens("x")[0, 0] == tiny_family.tokenizer.bos_token_id


def test_second_call_loads_instead_of_training(tiny_family, count_training):
    again = train_seed_family("tiny", **QUIET)
    assert count_training == []
    assert again.folder == tiny_family.folder
    toks = tiny_family.held_out_tokens().limit(4 * 64).to_tensor()
    for a, b in zip(logits(tiny_family, toks), logits(again, toks), strict=True):
        assert torch.equal(a, b)
    assert again.held_out_loss == tiny_family.held_out_loss
    loaded = load_seed_family("tiny")
    assert torch.equal(loaded.models[2](toks), tiny_family.models[2](toks))


def test_load_seed_family_needs_a_trained_family(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_seed_family"):
        load_seed_family("tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown seed-family preset"):
        load_seed_family("huge")


def test_family_folder_depends_on_the_config():
    tiny = PRESETS["tiny"]
    assert family_folder(tiny) == family_folder("tiny")
    assert family_folder(tiny.replace(steps=61)) != family_folder(tiny)


# -- damaged caches ------------------------------------------------------------------------------


def test_damaged_seed_is_retrained_with_a_warning(family_copy, count_training, tiny_family):
    cache_dir, folder = family_copy
    (folder / "seed1" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="rebuilding"):
        fam = train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert count_training == [1]  # only the broken seed is trained again
    assert fam.folder == folder and len(fam.models) == 3
    toks = tiny_family.held_out_tokens().limit(2 * 64).to_tensor()
    assert torch.equal(fam.models[0](toks), tiny_family.models[0](toks))
    # Training is deterministic on a CPU, so the rebuilt seed matches the original.
    assert fam.held_out_loss[1] == pytest.approx(tiny_family.held_out_loss[1], abs=0.05)
    # Repaired: the next call loads silently.
    count_training.clear()
    train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert count_training == []


def flip_byte(path):
    """Flip one bit in the middle of ``path`` (same size: only a checksum can see it)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def saved_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_the_cache_layout(tiny_family):
    files = saved_files(tiny_family.folder)
    assert "family.json" in files
    for piece in ("settings", "tokenizer", "held_out", "seed0", "seed1", "seed2"):
        assert f"{piece}/manifest.json" in files
    assert {"seed0/model.safetensors", "seed0/config.json", "seed0/train.json"} <= set(files)
    assert {"held_out/tokens.safetensors", "tokenizer/tokenizer.json"} <= set(files)


def test_a_flipped_byte_in_any_file_is_detected(family_copy):
    """Every file the family saved, one at a time: loading raises, naming its piece and the fix."""
    cache_dir, folder = family_copy
    for rel in saved_files(folder):
        original = (folder / rel).read_bytes()
        flip_byte(folder / rel)
        piece = rel.split("/")[0]
        with pytest.raises(CorruptCacheError, match=re.escape(str(folder / piece))) as err:
            load_seed_family("tiny", cache_dir=cache_dir)
        assert "Fix" in str(err.value), rel
        (folder / rel).write_bytes(original)
    load_seed_family("tiny", cache_dir=cache_dir)


@pytest.mark.parametrize(
    "rel",
    [
        "seed1/model.safetensors",
        "seed1/manifest.json",
        "tokenizer/tokenizer.json",
        "held_out/tokens.safetensors",
        "settings/settings.json",
        "family.json",
    ],
)
def test_a_flipped_byte_is_repaired_alone(rel, family_copy, tiny_family, count_training):
    """Repair trains only the seed whose file it was: none for the tokenizer, the held-out
    tokens, the settings or family.json (they are rebuilt from the corpus)."""
    cache_dir, folder = family_copy
    flip_byte(folder / rel)
    with pytest.warns(UserWarning, match="rebuilding"):
        fam = train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert count_training == ([1] if rel.startswith("seed1") else [])
    again = load_seed_family("tiny", cache_dir=cache_dir)  # repaired and verified
    toks = tiny_family.held_out_tokens().limit(2 * 64).to_tensor()
    for a, b in zip(logits(again, toks), logits(tiny_family, toks), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert fam.held_out_loss == pytest.approx(tiny_family.held_out_loss, abs=1e-5)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "seed1" / "model.safetensors").unlink(),
        lambda f: (f / "seed1" / "config.json").write_text("{ broken"),
        lambda f: (f / "seed1" / "train.json").write_text("[]"),
        lambda f: (f / "seed1" / "manifest.json").unlink(),
        lambda f: shutil.rmtree(f / "seed1"),
    ],
    ids=["missing-weights", "bad-config-json", "bad-train-json", "no-manifest", "no-seed-folder"],
)
def test_every_kind_of_damage_is_detected(damage, family_copy, fake_training):
    cache_dir, folder = family_copy
    damage(folder)
    with pytest.warns(UserWarning, match="rebuilding"):
        fam = train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert fake_training == [1] and fam.held_out_loss[1] == 9.0
    load_seed_model(folder / "seed1")  # repaired
    assert load_seed_family("tiny", cache_dir=cache_dir).held_out_loss[1] == 9.0


@pytest.mark.parametrize("piece", ["tokenizer", "held_out", "settings"])
def test_a_missing_base_piece_is_rebuilt_without_training(piece, family_copy, fake_training):
    cache_dir, folder = family_copy
    shutil.rmtree(folder / piece)
    with pytest.warns(UserWarning, match="rebuilding"):
        train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert fake_training == []  # the seeds do not depend on the files, only on their content
    load_seed_family("tiny", cache_dir=cache_dir)


def test_changed_data_retrains_every_seed(family_copy, fake_training, monkeypatch):
    cache_dir, folder = family_copy
    real = family_module._corpus_split

    def edited(tokenizer, config):  # as if the standard library had been edited
        train, held = real(tokenizer, config)
        return train.flip(0), held

    monkeypatch.setattr(family_module, "_corpus_split", edited)
    (folder / "family.json").unlink()  # an interrupted run: the repair path reads the data
    with pytest.warns(UserWarning, match="changed"):
        train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert fake_training == [0, 1, 2]


def test_bad_family_json_is_rewritten_without_training(family_copy, count_training):
    cache_dir, folder = family_copy
    (folder / "family.json").write_text("[1, 2")
    with pytest.warns(UserWarning, match="family.json"):
        fam = train_seed_family("tiny", cache_dir=cache_dir, **QUIET)
    assert count_training == []
    assert json.loads((folder / "family.json").read_text())["seeds"][0]["seed"] == 0
    assert len(fam.models) == 3


def test_load_seed_model_names_the_file_and_the_fix(family_copy):
    _, folder = family_copy
    seed_folder = folder / "seed0"
    (seed_folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptCacheError, match=rf"{seed_folder}/model.safetensors.*Fix: delete"):
        load_seed_model(seed_folder)
    (seed_folder / "model.safetensors").unlink()
    with pytest.raises(CorruptCacheError, match="model.safetensors is missing"):
        load_seed_model(seed_folder)
    (seed_folder / "manifest.json").unlink()
    with pytest.raises(CorruptCacheError, match="manifest.json is missing"):
        load_seed_model(seed_folder)
    with pytest.raises(CorruptCacheError):
        load_seed_family("tiny", cache_dir=family_copy[0])


def test_weights_that_do_not_fit_the_config(tmp_path, tiny_family):
    from tl_universality.core.saving import save_folder
    from tl_universality.data.seeds.files import PIECE_VERSION, SEED_MODEL, _json_safe_cfg

    model = tiny_family.models[0]
    cfg = _json_safe_cfg(model.cfg)
    cfg["d_mlp"] = cfg["d_mlp"] * 2  # a consistent folder (checksums fine) that is wrong inside
    with save_folder(tmp_path / "seed0", SEED_MODEL, PIECE_VERSION) as out:
        out.write_tensors("model", model.state_dict())
        out.write_json("config", cfg)
    with pytest.raises(CorruptCacheError, match="do not match"):
        load_seed_model(tmp_path / "seed0")


# -- checkpoints ---------------------------------------------------------------------------------

SHORT = PRESETS["tiny"].replace(name="short", steps=12, warmup=2, seeds=(0, 1))


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_saved_and_loaded(tmp_path, count_training):
    from transformer_lens import HookedTransformer

    fam = train_seed_family(SHORT, cache_dir=tmp_path / "a", checkpoints=[0, 5, 12], **QUIET)
    assert count_training == [0, 1] and fam.info["checkpoints"] == [0, 5, 12]
    plain = train_seed_family(SHORT, cache_dir=tmp_path / "b", **QUIET)
    # Saving checkpoints does not change the run: the final weights are bit for bit the same.
    for m, p in zip(fam.models, plain.models, strict=True):
        assert same_weights(weights(m), weights(p))
    # Step 0 is the initialisation: the same as building the model from its config and seed.
    start = load_seed_family(SHORT, cache_dir=tmp_path / "a", checkpoint=0)
    assert start.step == 0 and start.tokens_seen == 0
    for seed, model in zip(SHORT.seeds, start.models, strict=True):
        torch.manual_seed(seed)
        fresh = HookedTransformer(SHORT.model_config(seed, len(fam.tokenizer)))
        assert same_weights(weights(model), weights(fresh))
    # Step 5: between the two, with the held-out loss measured on the held-out set.
    mid = load_seed_family(SHORT, cache_dir=tmp_path / "a", checkpoint=5)
    assert mid.step == 5 and mid.tokens_seen == 5 * SHORT.batch_size * SHORT.n_ctx
    held = fam.held_out_tokens().to_tensor()
    for model, loss in zip(mid.models, mid.held_out_loss, strict=True):
        assert loss == pytest.approx(seeds.mean_loss(model, held), abs=1e-6)
    assert not same_weights(weights(mid.models[0]), weights(fam.models[0]))
    assert not same_weights(weights(mid.models[0]), weights(start.models[0]))
    assert start.held_out_loss[0] > mid.held_out_loss[0] > fam.held_out_loss[0]
    final = load_seed_family(SHORT, cache_dir=tmp_path / "a", checkpoint=12)
    assert same_weights(weights(final.models[1]), weights(fam.models[1]))


def test_asking_for_new_checkpoints_retrains_only_then(tmp_path, count_training):
    train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[4], **QUIET)
    train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[4], **QUIET)
    assert count_training == [0, 1]
    with pytest.raises(FileNotFoundError, match=r"checkpoints=\[8\]"):
        load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=8)
    fam = train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[8], **QUIET)
    assert count_training == [0, 1, 0, 1]
    assert fam.info["checkpoints"] == [4, 8, 12]  # the old checkpoint is kept (saved again)
    load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=4)
    with pytest.raises(ValueError, match="Checkpoint steps"):
        train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[13], **QUIET)
    with pytest.raises(ValueError, match="Checkpoint steps"):
        load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=-1)


def test_a_damaged_checkpoint_retrains_its_seed_alone(tmp_path, count_training):
    train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[3, 6], **QUIET)
    folder = family_folder(SHORT, cache_dir=tmp_path)
    before = weights(load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=6).models[1])
    flip_byte(seeds.checkpoint_folder(folder, 3, 1) / "model.safetensors")
    with pytest.raises(CorruptCacheError, match="step3/seed1/model.safetensors"):
        load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=3)
    count_training.clear()
    train_seed_family(SHORT, cache_dir=tmp_path, checkpoints=[3], **QUIET)
    assert count_training == [1]
    after = load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=6)  # saved again, same run
    assert same_weights(before, weights(after.models[1]))
    load_seed_family(SHORT, cache_dir=tmp_path, checkpoint=3)


def test_the_gpu_preset_trains_on_a_cpu_with_a_few_steps(tmp_path):
    """The gpu preset's architecture and recipe, 2 steps of 2 sequences, on a few thousand token
    ids of its vocabulary (the corpus with the standard library's source would take minutes to
    tokenize, and its held-out loss minutes to measure, on a CPU)."""
    gpu = PRESETS["gpu"]
    assert 4 <= gpu.n_layers <= 6 and 256 <= gpu.d_model <= 512
    assert gpu.steps * gpu.batch_size * gpu.n_ctx > 10_000_000  # tens of millions of tokens
    config = gpu.replace(name="gpu-smoke", steps=2, warmup=1, batch_size=2, seeds=(0, 1))
    toks = torch.randint(1, gpu.vocab_size, (12_000,), generator=torch.Generator().manual_seed(0))
    fam = train_seed_family(config, tokens=toks, cache_dir=tmp_path, checkpoints=[1], **QUIET)
    assert [m.cfg.n_layers for m in fam.models] == [gpu.n_layers] * 2
    assert fam.models[0].cfg.d_model == gpu.d_model and fam.info["checkpoints"] == [1, 2]
    assert all(math.isfinite(x) for x in fam.held_out_loss)


def test_custom_tokens(tmp_path, tiny_tokenizer, count_training):
    config = PRESETS["tiny"].replace(name="custom-test", steps=4, warmup=1, seeds=(0, 1))
    toks = torch.randint(1, len(tiny_tokenizer), (2000,))
    fam = train_seed_family(config, tokens=toks, cache_dir=tmp_path, **QUIET)
    assert count_training == [0, 1] and len(fam.models) == 2
    assert fam.train_tokens().seq_len == config.n_ctx
    n = fam.train_tokens().n_sequences + fam.held_out_tokens().n_sequences
    assert n == 2000 // (config.n_ctx - 1)
    again = train_seed_family(config, tokens=toks, cache_dir=tmp_path, **QUIET)
    assert count_training == [0, 1] and again.folder == fam.folder
    other = train_seed_family(config, tokens=toks.flip(0), cache_dir=tmp_path, **QUIET)
    assert other.folder != fam.folder
    with pytest.raises(ValueError, match="vocabulary"):
        train_seed_family(config, tokens=toks + 10_000, cache_dir=tmp_path, **QUIET)
