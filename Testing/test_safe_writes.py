"""Never lose a file: the output folder is locked, published all or nothing, cleaned up on signals;
files a run did not create are never removed; OS errors and bad training/evaluation inputs are one
line (exit 2) before any work, with what is on disk afterwards checked."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ct_samples import body_ct, body_geometry, centre_ras, write_case
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.io.volume_reader import write_volume
from LymphNodeMTLLib.outputs import output_folder
from LymphNodeMTLLib.outputs.output_folder import LOCK_NAME, STAGING_PREFIX, OutputFolder

OUTPUTS = ["nodes.csv", "nodes.seg.nrrd", "run.json"]
LIB = str(Path(__file__).resolve().parents[1] / "LymphNodeMTL")


@pytest.fixture
def inputs(tmp_path):
    return write_case(tmp_path / "in", body_ct(np.random.default_rng(5)), body_geometry())


def predict(inputs, out, *extra):
    ct, seeds = inputs
    return ["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out), "--device", "cpu", *extra]


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, fragment: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lymphnode-mtl: error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


def listing(folder: Path) -> dict:
    """Every file below `folder` with its bytes: what is on disk."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_leftovers(folder: Path) -> None:
    names = [p.name for p in folder.iterdir()]
    assert not [n for n in names if n.startswith(STAGING_PREFIX) or n == LOCK_NAME], names


# --- files this run did not create ----------------------------------------------------------------
def test_a_users_own_files_are_never_removed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<p>my own notes on this patient</p>")
    (out / "nodes.dcm").write_bytes(b"a DICOM SEG from another tool")
    (out / "readme.txt").write_text("keep")
    (out / "sub").mkdir()
    (out / "sub" / "x.csv").write_text("1,2\n")
    before = listing(out)
    code, _, err = run_cli(predict(inputs, out), capsys)
    assert code == 0, err
    after = listing(out)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == OUTPUTS
    warnings = [line for line in err.splitlines() if "warning" in line and "not written by this run" in line]
    assert len(warnings) == 1 and "report.html" in warnings[0] and "nodes.dcm" in warnings[0]
    # --overwrite replaces this tool's results only; the user's files still stay
    code, _, err = run_cli(predict(inputs, out, "--overwrite"), capsys)
    assert code == 0, err
    assert {k: listing(out)[k] for k in before} == before
    no_leftovers(out)


def test_overwrite_removes_only_what_the_earlier_run_listed(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(predict(inputs, out, "--dicom-seg"), capsys)
    assert code == 0, err
    assert "nodes.dcm" in json.loads((out / "run.json").read_text())["outputs"]
    (out / "report.png").write_bytes(b"someone's picture")
    code, _, err = run_cli(predict(inputs, out), capsys)  # no --overwrite: refused, all kept
    assert code == 2 and "nodes.dcm" in one_error_line(err, "--overwrite")
    code, _, err = run_cli(predict(inputs, out, "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS + ["report.png"])
    assert (out / "report.png").read_bytes() == b"someone's picture"


# --- lock ------------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys
from pathlib import Path
from LymphNodeMTLLib.outputs.output_folder import FolderLock
lock = FolderLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_second_run_into_a_locked_folder_is_refused(inputs, tmp_path, capsys):
    """Another process writes into --out: this run exits 2 with one line and writes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": LIB}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(predict(inputs, out), capsys)
        assert code == 2
        one_error_line(err, f"another lymphnode-mtl run is writing into {out}")
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    code, _, err = run_cli(predict(inputs, out), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS  # no lock file, no staging folder


def test_the_lock_is_taken_again_under_the_lock(tmp_path):
    """Two writers in one process: the second is refused while the first holds the folder."""
    out = tmp_path / "out"
    with OutputFolder(out, ["a.txt"]) as first:
        (first.staging / "a.txt").write_text("first")
        with pytest.raises(InputError, match="another lymphnode-mtl run"):
            with OutputFolder(out, ["a.txt"]):
                pass
        first.publish()
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(InputError, match="already holds a.txt"):
        with OutputFolder(out, ["a.txt"]):
            pass
    no_leftovers(out)


# --- all or nothing ---------------------------------------------------------------------------------
def test_a_failing_swap_puts_the_old_files_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "c"):
        (out / name).write_text(f"old {name}")
    real_replace = os.replace
    moved_in = []

    def failing_replace(src, dst):
        if Path(dst).parent == out and Path(src).parent != out:
            moved_in.append(Path(dst).name)
            if len(moved_in) == 2:
                raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst)

    with pytest.raises(InputError) as error:
        with OutputFolder(out, ["a", "b", "c"], overwrite=True) as folder:
            for name in ("a", "b", "c"):
                (folder.staging / name).write_text(f"new {name}")
            monkeypatch.setattr(output_folder.os, "replace", failing_replace)
            folder.publish()
    monkeypatch.undo()
    assert "\n" not in str(error.value) and "Input/output error" in str(error.value)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "old a", "b": "old b", "c": "old c"}


def test_a_full_disk_while_writing_leaves_the_old_results(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(predict(inputs, out), capsys)[0] == 0
    before = listing(out)
    import LymphNodeMTLLib.outputs.results_table as results_table

    def full_disk(path, results):
        Path(path).write_bytes(b"id,prob")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results_table, "write_results_csv", full_disk)
    code, _, err = run_cli(predict(inputs, out, "--overwrite"), capsys)
    assert code == 2
    line = one_error_line(err, "No space left on device")
    assert "nodes.csv" in line and "free disk space" in line
    assert listing(out) == before
    no_leftovers(out)


def test_an_image_writer_failure_is_one_line_and_leaves_nothing(inputs, tmp_path, capsys, monkeypatch):
    import LymphNodeMTLLib.outputs.segmentation_writer as segmentation_writer

    def failing_writer(*_args, **_kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: itkNrrdImageIO.cxx:1349:\n"
                           "ITK ERROR: NrrdImageIO: Write: Error writing nodes.seg.nrrd")

    monkeypatch.setattr(segmentation_writer, "write_segmentation", failing_writer)
    out = tmp_path / "new" / "out"
    code, _, err = run_cli(predict(inputs, out), capsys)
    assert code == 2
    one_error_line(err, "cannot write an image into")
    assert not (tmp_path / "new").exists()  # the folders this run created are gone again


# --- signals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_leaves_no_temporary_folder_and_no_partial_results(tmp_path, signum):
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": LIB, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "phantom", "--out", str(out),
                              "--cases", "60", "--seed", "3"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            staging = [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
            if staging and any(staging[0].iterdir()):
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the phantom writer never started writing")
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line]
    assert len(lines) == 1 and "no partial results were left" in lines[0], err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


# --- OS errors -------------------------------------------------------------------------------------
def test_a_dangling_symlink_as_out_is_one_line(inputs, tmp_path, capsys):
    out = tmp_path / "results"
    os.symlink(tmp_path / "unmounted" / "share", out)
    code, _, err = run_cli(predict(inputs, out), capsys)
    assert code == 2
    one_error_line(err, "is a symbolic link to")
    assert out.is_symlink() and not out.exists()


def test_an_out_below_a_file_and_a_too_long_name_are_one_line(inputs, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(predict(inputs, tmp_path / "afile" / "out"), capsys)
    assert code == 2 and str(tmp_path / "afile") in one_error_line(err, "cannot create folder")
    code, _, err = run_cli(predict(inputs, tmp_path / ("n" * 300)), capsys)
    assert code == 2
    one_error_line(err, "longer than 255 bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"]


def test_a_read_only_folder_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    def read_only(*_args, dir=None, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(output_folder.tempfile, "mkdtemp", read_only)
    out = tmp_path / "ro"
    code, _, err = run_cli(predict(inputs, out), capsys)
    assert code == 2
    assert str(out) in one_error_line(err, "Read-only file system; choose a writable folder")
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission_is_one_line(inputs, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(predict(inputs, locked / "out"), capsys)
        assert code == 2
        one_error_line(err, "Permission denied")
    finally:
        locked.chmod(0o700)


# --- train and evaluate --------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path):
    """One CT with two nodes, a label map on its grid, in manifest format."""
    folder = tmp_path / "data"
    folder.mkdir()
    geometry = body_geometry()
    image = body_ct(np.random.default_rng(9))
    write_volume(folder / "ct.nrrd", image, geometry)
    write_volume(folder / "labels.nrrd", (image > 0).astype(np.int16), geometry)
    centre = centre_ras(geometry)
    (folder / "nodes.csv").write_text(
        "id,r,a,s,label,mask_value\n"
        f"1,{centre[0]:.2f},{centre[1]:.2f},{centre[2]:.2f},1,1\n"
        f"2,{centre[0] + 6:.2f},{centre[1]:.2f},{centre[2]:.2f},0,\n")
    (folder / "manifest.csv").write_text("case_id,image,nodes,label_map\ncase1,ct.nrrd,nodes.csv,labels.nrrd\n")
    return folder / "manifest.csv"


def train(manifest, out, *extra):
    return ["train", "--manifest", str(manifest), "--out", str(out), *extra]


def test_train_refuses_an_existing_model_folder_before_training(manifest, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text('{"model_id": "someone\'s model"}')
    (out / "model.safetensors").write_bytes(b"weights")
    before = listing(out)
    code, _, err = run_cli(train(manifest, out), capsys)
    assert code == 2
    one_error_line(err, "already holds a model (config.json, model.safetensors)")
    assert listing(out) == before


def test_a_signal_during_training_keeps_the_last_checkpoint_and_no_temporary_file(manifest, tmp_path):
    recipe = tmp_path / "long.json"
    recipe.write_text(json.dumps({"epochs": 10000, "batch_size": 2, "val_fraction": 0.0, "device": "cpu",
                                  "network": {"channels": [4, 8]}, "mixed_precision": False,
                                  "preprocessing": {"patch_size": 16, "patch_spacing_mm": 2.0}}))
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": LIB, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "LymphNodeMTLLib.commands.cli", *train(manifest, out, "--config",
                              str(recipe))], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epochs, where a checkpoint may be half-written
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # whole, for --resume
    assert int(torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]) >= 1


def test_train_refuses_a_file_as_out_before_training(manifest, tmp_path, capsys):
    out = tmp_path / "model.bin"
    out.write_bytes(b"not a folder")
    code, _, err = run_cli(train(manifest, out), capsys)
    assert code == 2
    one_error_line(err, "is a file, not a folder")
    assert out.read_bytes() == b"not a folder"


@pytest.mark.parametrize("recipe, fragment", [
    ({"epochs": -1}, "epochs must be a whole number, 0 or more"),
    ({"batch_size": 0}, "batch_size must be a whole number, at least 1"),
    ({"lr": 0.0}, "lr must be a number above 0"),
    ({"val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
])
def test_train_refuses_a_meaningless_recipe(manifest, tmp_path, capsys, recipe, fragment):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps(recipe))
    out = tmp_path / "model"
    code, _, err = run_cli(train(manifest, out, "--config", config), capsys)
    assert code == 2
    one_error_line(err, fragment)
    assert not out.exists()


def test_train_refuses_a_node_far_outside_its_ct(manifest, tmp_path, capsys):
    nodes = manifest.parent / "nodes.csv"
    nodes.write_text(nodes.read_text() + "far,9999,0,0,1,\n")
    out = tmp_path / "model"
    code, _, err = run_cli(train(manifest, out), capsys)
    assert code == 2
    one_error_line(err, "node far at RAS (9999.0, 0.0, 0.0) mm is outside its CT ct.nrrd")
    assert not out.exists()


def test_train_refuses_a_label_map_on_another_grid(manifest, tmp_path, capsys):
    shifted = body_geometry(spacing=(0.8, 0.75, 2.5))
    write_volume(manifest.parent / "labels.nrrd", np.zeros(shifted.shape_kji, np.int16), shifted)
    code, _, err = run_cli(train(manifest, tmp_path / "model"), capsys)
    assert code == 2
    one_error_line(err, "label map labels.nrrd is on another voxel grid than its CT ct.nrrd")


def test_train_refuses_a_training_ct_that_is_not_in_hu(manifest, tmp_path, capsys):
    from LymphNodeMTLLib.io.volume_reader import read_volume

    image, geometry, _ = read_volume(manifest.parent / "ct.nrrd")
    write_volume(manifest.parent / "ct.nrrd", (image.astype(np.int32) + 1024).astype(np.uint16), geometry)  # raw
    rc = main(train(manifest, tmp_path / "model"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ct.nrrd" in err[0], err
    assert not (tmp_path / "model" / "config.json").exists()


def test_a_latin1_manifest_is_one_line(manifest, tmp_path, capsys):
    (manifest.parent / "nodes.csv").write_bytes(
        "id,r,a,s,label\nStation 4R gauche \xe9,0,0,0,1\n".encode("latin-1"))
    code, _, err = run_cli(train(manifest, tmp_path / "model"), capsys)
    assert code == 2
    one_error_line(err, "is not UTF-8 text (byte 0xe9")


def test_evaluate_refuses_a_label_map_on_another_grid(manifest, tmp_path, capsys):
    other = body_geometry(shape_kji=(14, 50, 60))
    write_volume(manifest.parent / "labels.nrrd", np.zeros(other.shape_kji, np.int16), other)
    out = tmp_path / "eval"
    code, _, err = run_cli(["evaluate", "--manifest", manifest, "--out", out, "--device", "cpu"], capsys)
    assert code == 2
    line = one_error_line(err, "is on another voxel grid")
    assert "60x50x14 vs 60x56x14" in line
    assert not out.exists()


def test_a_signal_waits_for_the_end_of_the_swap_while_other_threads_run():
    """A SIGTERM sent to the process reaches whichever thread does not block it (torch's threads, a
    parent watch), but its handler runs in the main thread: the swap and the cleanup must still
    run to their end before it is raised."""
    import threading

    from LymphNodeMTLLib.outputs.output_folder import TerminatedBySignal, _signals_deferred, cleanup_on_signals

    steps = []
    go = threading.Event()

    def send():  # a thread started before the swap, as torch's are: it does not block signals
        go.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send)
    sender.start()
    with pytest.raises(TerminatedBySignal), cleanup_on_signals():
        with _signals_deferred():
            go.set()
            sender.join()
            for step in range(3):
                time.sleep(0.05)  # the main thread runs bytecode: where a handler would run
                steps.append(step)
        steps.append("after the block")  # not reached: the signal arrives as the block ends
    assert steps == [0, 1, 2]
