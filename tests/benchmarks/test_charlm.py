"""The language-model workload: fixed split and vocabulary, reproducible batches, a causal model."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.base import charlm


def _tiny_stdlib(tmp_path: Path) -> str:
    for i in range(30):
        (tmp_path / f"mod{i}.py").write_text(f"def f{i}(x):\n\treturn x * {i}  # é\n" * 20)
    (tmp_path / "notes.txt").write_text("not python")
    return str(tmp_path)


def test_split_is_by_file_name_and_the_vocabulary_is_fixed(tmp_path: Path) -> None:
    c = charlm.corpus(_tiny_stdlib(tmp_path))
    val_files = [f"mod{i}.py" for i in range(30) if charlm._is_validation(f"mod{i}.py")]
    total = sum(len(charlm.encode(p.read_text())) for p in tmp_path.glob("*.py"))
    val = sum(len(charlm.encode((tmp_path / f).read_text())) for f in val_files)
    assert 0 < len(val_files) < 30
    assert (c.train.numel(), c.val.numel()) == (total - val, val)
    assert c.description["files"] == 30  # the .txt file is not read
    assert charlm.VOCAB_SIZE == 98 and int(c.train.max()) == charlm.UNKNOWN  # "é" maps to the unknown token
    assert charlm.encode("\t\n a~").tolist() == [0, 1, 2, 67, 96]


def test_batches_are_reproducible_and_targets_are_the_next_character() -> None:
    data = torch.arange(1000)
    x1, y1 = charlm.train_batch(data, 4, 16, torch.Generator().manual_seed(3))
    x2, y2 = charlm.train_batch(data, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16) and torch.equal(y1, x1 + 1)
    val = charlm.val_batches(data, 10, 16, 4)
    assert [b[0].shape[0] for b in val] == [4, 4, 2]
    assert torch.equal(val[1][0][0], torch.arange(4 * 98, 4 * 98 + 16))


def test_the_model_is_causal() -> None:
    torch.manual_seed(0)
    model = charlm.CharTransformer(d_model=32, nhead=2, num_layers=2, seq_len=16).eval()
    x = torch.randint(0, charlm.VOCAB_SIZE, (2, 16))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % charlm.VOCAB_SIZE
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert a.shape == (2, 16, charlm.VOCAB_SIZE)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)  # earlier positions never see later characters
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)
