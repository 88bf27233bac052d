"""Using a trained model: images as a user has them, ONNX/TorchScript export, bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_ladder.apps import predict
from mnist_ladder.apps.export import export
from mnist_ladder.engine import train
from mnist_ladder.runs import experiment
from mnist_ladder.runs.store import Store


def user_images(mnist, folder: Path, n: int = 200, seed: int = 0) -> list[tuple[Path, int]]:
    """MNIST test digits written out the way a user's photos or drawings look."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        digit = Image.fromarray(mnist.test_images[i].numpy())
        size = int(rng.integers(100, 401))
        big = digit.resize((size, size), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (int(size * rng.uniform(1.2, 2.0)), int(size * rng.uniform(1.2, 2.0))))
        canvas.paste(
            big,
            (int(rng.integers(0, canvas.width - size + 1)), int(rng.integers(0, canvas.height - size + 1))),
        )
        if i % 2:  # dark ink on light paper
            canvas = Image.eval(canvas, lambda v: 255 - v)
        if i % 5 == 0:
            canvas = canvas.convert("RGB")
        suffix = [".png", ".jpg", ".png", ".bmp", ".jpg"][i % 5]
        path = folder / f"digit{i:03d}{suffix}"
        canvas.save(path, quality=90) if suffix == ".jpg" else canvas.save(path)
        out.append((path, int(mnist.test_labels[i])))
    return out


def test_user_style_images_are_predicted_almost_as_well_as_tensors(
    trained_step6, mnist, tmp_path: Path
) -> None:
    db, row = trained_step6
    with Store(db, create=False) as store:
        model, step = experiment.load_model(predict.resolve_run(row.id, store))
    assert step == "step6"
    x = train.normalize(train.to_unit(mnist.test_images[:200]))
    tensor_acc = (train.predict(model, x).argmax(1) == mnist.test_labels[:200]).float().mean().item()
    files = user_images(mnist, tmp_path)
    preds, problems = predict.predict_files(model, [p for p, _ in files])
    assert problems == []
    file_acc = np.mean([p.digit == y for p, (_, y) in zip(preds, files, strict=True)])
    assert tensor_acc >= 0.98
    assert file_acc >= 0.98, (file_acc, tensor_acc)
    assert file_acc >= tensor_acc - 0.015
    assert all(abs(sum(p.probabilities) - 1) < 1e-4 for p in preds)


def test_preprocessing_recentres_like_mnist(mnist) -> None:
    digit = mnist.test_images[0].numpy().astype(np.float32) / 255
    canvas = np.ones((300, 200), dtype=np.float32)
    canvas[10:122, 70:182] = (
        1
        - np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((112, 112)), dtype=np.float32)
        / 255
    )
    seen = predict.mnist_style(canvas)
    assert seen.shape == (28, 28) and seen.max() == pytest.approx(1.0, abs=0.05)
    ys, xs = np.nonzero(seen > 0.1)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) <= 20  # fitted into 20x20
    assert ys.min() >= 1 and ys.max() <= 26 and xs.min() >= 1 and xs.max() <= 26
    cy = (np.arange(28)[:, None] * seen).sum() / seen.sum()
    assert abs(cy - 13.5) < 1.0


def truncated_png(path: Path) -> Path:
    buf = Path(path.with_suffix(".full.png"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf)
    path.write_bytes(buf.read_bytes()[:200])
    return path


def huge_png_header(path: Path, w: int = 20_000, h: int = 20_000) -> Path:
    """A valid PNG header announcing 20,000 x 20,000 pixels, without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: (p.write_text("hello, not an image"), p)[1], "not an image"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
        (truncated_png, "truncated"),
        (huge_png_header, "pixel limit"),
        (lambda p: (Image.new("L", (64, 64), 255).save(p, format="PNG"), p)[1], "no digit found"),
    ],
)
def test_bad_images_are_one_clear_line_and_nonzero(trained_step6, tmp_path: Path, make, message) -> None:
    db, row = trained_step6
    bad = make(tmp_path / "input.png")
    r = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", "predict", row.id, str(bad), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_folder_of_mixed_files_predicts_images_and_reports_the_rest(
    trained_step6, mnist, tmp_path: Path
) -> None:
    db, row = trained_step6
    files = user_images(mnist, tmp_path / "mixed", n=4)
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_ladder",
            "predict",
            row.id,
            str(tmp_path / "mixed"),
            "--db",
            str(db),
            "--json",
            "--show",
            str(tmp_path / "seen"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["predictions"]) == 4 and any("notes.txt" in s for s in out["skipped"])
    assert len(out["predictions"][0]["probabilities"]) == 10
    assert len(list((tmp_path / "seen").glob("*-seen.png"))) == 4
    assert [p["digit"] for p in out["predictions"]] == [y for _, y in files]


def test_run_can_be_named_by_id_folder_file_or_best(trained_step6) -> None:
    db, row = trained_step6
    weights = Path(row.run_dir) / "model.pt"
    with Store(db, create=False) as store:
        for name in (row.id, row.run_dir, str(weights)):
            assert predict.resolve_run(name, store) == weights
        # 'best' takes steps with 3 finished full-protocol seeds; this one trained on a subset
        with pytest.raises(predict.PredictError, match="3 or more finished test-protocol seeds"):
            predict.resolve_run("best", store)


def test_mismatched_architecture_is_one_line(trained_step6, tmp_path: Path) -> None:
    _db, row = trained_step6
    sd = torch.load(Path(row.run_dir) / "model.pt", weights_only=True)
    sd["step"] = "step4"
    torch.save(sd, tmp_path / "model.pt")
    with pytest.raises(experiment.ModelFileError, match="do not match step4's architecture"):
        experiment.load_model(tmp_path / "model.pt")


def test_onnx_export_matches_pytorch_on_the_whole_test_set(trained_step6, mnist, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _db, row = trained_step6
    model, _ = experiment.load_model(Path(row.run_dir) / "model.pt")
    path = export(model, "onnx", tmp_path / "m.onnx")
    x = train.to_unit(mnist.test_images)
    ref = predict.WithNormalization(model).eval()(x).detach().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate(
        [session.run(None, {"images": x[i : i + 1000].numpy()})[0] for i in range(0, len(x), 1000)]
    )  # batch 1000: dynamic batch axis
    assert got.shape == (10_000, 10)
    assert np.abs(got - ref).max() < 1e-4  # stated tolerance on logits
    assert (got.argmax(1) == ref.argmax(1)).all()
    one = session.run(None, {"images": x[:1].numpy()})[0]
    assert one.shape == (1, 10)


def test_torchscript_export_matches_pytorch(trained_step6, mnist, tmp_path: Path) -> None:
    _db, row = trained_step6
    model, _ = experiment.load_model(Path(row.run_dir) / "model.pt")
    path = export(model, "torchscript", tmp_path / "m.pt")
    x = train.to_unit(mnist.test_images[:500])
    with torch.inference_mode():
        ref = predict.WithNormalization(model).eval()(x)
        got = torch.jit.load(str(path))(x)
    assert torch.allclose(got, ref, atol=1e-5)
