"""Checkpoints and resume, a dying rank, larger-than-memory shards, faults on files.

Real MPI processes are signalled and killed; real files are truncated, corrupted
and written past a file-size limit.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO, env, make_patches_file, mpirun, rank_of, rank_pids, train_args, unavailable
from sae import SaeError, h5io, labels

ITERATIONS = 200


@pytest.fixture(scope="module")
def patches_40k(tmp_path_factory):
    """Enough patches that an iteration takes a few milliseconds: time to signal mid-run."""
    return make_patches_file(tmp_path_factory.mktemp("data") / "patches.h5", 40000)


PARAMS = ("W1", "W2", "b1", "b2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, patches_40k):
    """The reference: the same training, never stopped."""
    out = tmp_path_factory.mktemp("ref") / "model.h5"
    mpirun(2, *train_args(patches_40k, out, iterations=ITERATIONS))
    return read_model(out)


def read_model(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in (*PARAMS, "history")}, dict(f.attrs)


def assert_same_bits(model, reference):
    """W1, W2, b1, b2, the cost and every iteration's cost and gradient norm, bit for bit."""
    (params, attrs), (ref_params, ref_attrs) = model, reference
    for name in PARAMS:
        assert params[name].tobytes() == ref_params[name].tobytes(), name
    assert np.array_equal(params["history"][:, :2], ref_params["history"][:, :2])
    assert (attrs["cost"], attrs["evaluations"]) == (ref_attrs["cost"], ref_attrs["evaluations"])
    assert attrs["iterations"] == ITERATIONS


def start_training(tmp_path, patches, *extra, ranks=2, iterations=ITERATIONS):
    """Training in the background; its stderr goes to tmp_path/train.log."""
    log = open(tmp_path / "train.log", "w")
    mpiexec = shutil.which("mpiexec", path=env()["PATH"])
    args = train_args(patches, tmp_path / "model.h5", iterations=iterations)
    args += ["--checkpoint", tmp_path / "ckpt.h5", "--checkpoint-every", 5, *extra]
    cmd = [mpiexec, "-n", str(ranks), sys.executable, *map(str, args)]
    return subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT)


def wait_for_iteration(tmp_path, k, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = re.findall(r"iteration +(\d+)/", (tmp_path / "train.log").read_text())
        if done and int(done[-1]) >= k:
            return
        time.sleep(0.02)
    raise AssertionError(f"no iteration {k} within {timeout} s:\n{(tmp_path / 'train.log').read_text()}")


def resume(tmp_path, patches, ranks=2):
    """Run the same training again to completion; returns (log, model)."""
    out = mpirun(ranks, *train_args(patches, tmp_path / "model.h5", iterations=ITERATIONS),
                 "--checkpoint", tmp_path / "ckpt.h5", "--checkpoint-every", 5)  # fmt: skip
    return out.stderr, read_model(tmp_path / "model.h5")


@pytest.mark.parametrize(("after", "ranks"), [(2, 2), (60, 3), (150, 1)])
def test_sigterm_writes_a_checkpoint_and_the_resumed_run_is_bit_for_bit_the_uninterrupted_one(
    tmp_path, patches_40k, uninterrupted, after, ranks
):
    """Stopped where SIGTERM finds it (any evaluation), resumed on 2, 3 or 1 ranks."""
    proc = start_training(tmp_path, patches_40k)
    wait_for_iteration(tmp_path, after)
    for pid in rank_pids(proc.pid):  # as Slurm does at a time limit: every task gets SIGTERM
        os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    log = (tmp_path / "train.log").read_text()
    stopped = re.search(
        r"error: stopped by SIGTERM \(ranks? [^)]*\) after iteration (\d+) \(evaluation (\d+)\);"
        r" checkpoint .* written",
        log,
    )
    assert stopped, log
    assert not (tmp_path / "model.h5").exists() and (tmp_path / "ckpt.h5").exists()
    state, history, _, _ = h5io.read_checkpoint(tmp_path / "ckpt.h5")
    assert len(history) == int(stopped.group(1)) >= after and state["evaluations"] == int(stopped.group(2))

    log, model = resume(tmp_path, patches_40k, ranks)
    assert f"resumed from iteration {len(history)}, evaluation {stopped.group(2)}" in log
    assert list(model[1]["resumed_from"]) == [len(history)] and model[1]["ranks"] == ranks
    assert_same_bits(model, uninterrupted)
    assert not (tmp_path / "ckpt.h5").exists()  # removed once the model is written


def test_ctrl_c_stops_every_rank_at_once_with_a_checkpoint_and_the_resumed_run_is_bit_for_bit(
    tmp_path, patches_40k, uninterrupted
):
    """Ctrl-C in a terminal sends SIGINT to mpiexec (in the foreground), which passes it to every
    rank. Before, each rank raised KeyboardInterrupt wherever it was, and a rank left waiting in a
    collective for a dead one hung until the MPI timeout (300 s)."""
    proc = start_training(tmp_path, patches_40k)
    wait_for_iteration(tmp_path, 20)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    log = (tmp_path / "train.log").read_text()
    stopped = re.search(r"error: stopped by SIGINT \(ranks? [^)]*\) after iteration (\d+) \(evaluation", log)
    assert stopped and "Traceback" not in log, log
    log, model = resume(tmp_path, patches_40k)
    assert f"resumed from iteration {stopped.group(1)}" in log
    assert_same_bits(model, uninterrupted)


@pytest.mark.parametrize(
    ("ranks", "rank", "sig", "resume_on"),
    [(2, 1, "SIGTERM", 3), (2, 1, "SIGINT", 1), (3, 2, "SIGTERM", 2), (3, 1, "SIGINT", 2)],
)
def test_a_stop_signal_on_one_rank_stops_every_rank_after_that_evaluation_with_a_checkpoint(
    tmp_path, patches_40k, uninterrupted, ranks, rank, sig, resume_on
):
    """Rank ``rank`` alone gets the signal (it sends it to itself, tests/mpi_stop.py) just before
    evaluation 37: its handler's flag rides in that evaluation's combine, so every rank stops
    after evaluation 37 exactly; the next run, on another rank count, resumes bit for bit."""
    args = train_args(patches_40k, tmp_path / "model.h5", iterations=ITERATIONS)
    args += ["--checkpoint", tmp_path / "ckpt.h5", "--checkpoint-every", 5]
    proc = mpirun(
        ranks, REPO / "tests" / "mpi_stop.py", rank, sig, 37, "--", *args[1:], check=False, timeout=120
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    stopped = re.fullmatch(
        rf"error: stopped by {sig} \(rank {rank} on {re.escape(socket.gethostname())}\) after iteration"
        rf" (\d+) \(evaluation 37\); checkpoint {re.escape(str(tmp_path / 'ckpt.h5'))} written:"
        " run again to resume",
        errors[0],
    )
    assert stopped, errors[0]
    state, history, _, _ = h5io.read_checkpoint(tmp_path / "ckpt.h5")
    assert state["evaluations"] == 37 and len(history) == int(stopped.group(1)) > 0
    assert not (tmp_path / "model.h5").exists() and "Traceback" not in proc.stderr

    log, model = resume(tmp_path, patches_40k, resume_on)
    assert f"resumed from iteration {len(history)}, evaluation 37" in log
    assert_same_bits(model, uninterrupted)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_on_one_rank_while_loading_stops_every_rank_with_one_line(tmp_path, patches_40k, sig):
    """The signal reaches rank 1 as it starts reading its patches: all ranks stop once loading ends
    (they agree on it), one error line, no model, no hang."""
    args = train_args(patches_40k, tmp_path / "model.h5", iterations=ITERATIONS)
    proc = mpirun(3, REPO / "tests" / "mpi_stop.py", 1, sig, 0, "--", *args[1:], check=False, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors == [
        f"error: stopped by {sig} (rank 1 on {socket.gethostname()}) while loading the patches"
    ], proc.stderr
    assert "iteration" not in proc.stderr and not (tmp_path / "model.h5").exists()


def test_sigterm_sent_to_one_nonzero_rank_from_outside_stops_the_training(
    tmp_path, patches_40k, uninterrupted
):
    """As a node's shutdown or an out-of-memory guard would: SIGTERM to rank 1's process alone.
    Before, that rank swallowed it and the training ran on to the end."""
    proc = start_training(tmp_path, patches_40k, ranks=2)
    wait_for_iteration(tmp_path, 15)
    (victim,) = [pid for pid in rank_pids(proc.pid) if rank_of(pid) == 1]
    os.kill(victim, signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    log = (tmp_path / "train.log").read_text()
    stopped = re.search(
        r"error: stopped by SIGTERM \(rank 1 on [^)]+\) after iteration (\d+) \(evaluation", log
    )
    assert stopped and int(stopped.group(1)) < ITERATIONS, log
    log, model = resume(tmp_path, patches_40k)
    assert f"resumed from iteration {stopped.group(1)}," in log
    assert_same_bits(model, uninterrupted)


def test_stopped_twice_the_model_lists_both_resumes_and_is_bit_for_bit_the_uninterrupted_one(
    tmp_path, patches_40k, uninterrupted
):
    """SIGTERM after iteration 30, resume, SIGTERM again after 100, resume on 3 ranks.

    (The log shows progress every 0.5 s, so each stop comes up to that much later: the
    second stop must still come before iteration 200.)
    """
    stops = []
    for after in (30, 100):
        proc = start_training(tmp_path, patches_40k)
        wait_for_iteration(tmp_path, after)
        for pid in rank_pids(proc.pid):
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        _, history, resumes, _ = h5io.read_checkpoint(tmp_path / "ckpt.h5")
        assert resumes == stops  # the checkpoint carries the resumes before it
        stops.append(len(history))
    _, model = resume(tmp_path, patches_40k, ranks=3)
    assert list(model[1]["resumed_from"]) == stops and 30 <= stops[0] < stops[1] < ITERATIONS
    assert_same_bits(model, uninterrupted)
    assert labels.training(tmp_path / "model.h5")["resumed"] == f"after iterations {stops[0]} and {stops[1]}"


def test_a_killed_rank_ends_the_job_quickly_and_the_resumed_run_is_bit_for_bit_the_same(
    tmp_path, patches_40k, uninterrupted
):
    proc = start_training(tmp_path, patches_40k)
    wait_for_iteration(tmp_path, 12)
    victim = max(rank_pids(proc.pid))  # not necessarily rank 0
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=30) != 0
    assert time.monotonic() - start < 30
    assert not (tmp_path / "model.h5").exists()
    assert not list(tmp_path.glob(".model.h5.tmp*"))
    _, history, _, _ = h5io.read_checkpoint(tmp_path / "ckpt.h5")
    assert len(history) >= 10 and len(history) % 5 == 0

    log, model = resume(tmp_path, patches_40k)
    assert f"resumed from iteration {len(history)}," in log
    assert_same_bits(model, uninterrupted)


def test_a_checkpoint_written_mid_line_search_resumes_bit_for_bit(tmp_path, patches_40k, uninterrupted):
    """The optimizer's state between two evaluations of one line search, saved on 3 ranks by the
    training's own pieces (tests/mpi_mid_search.py), then resumed by the training script on 2."""
    out = mpirun(3, REPO / "tests" / "mpi_mid_search.py", patches_40k, tmp_path / "ckpt.h5", ITERATIONS)
    iteration, evaluation = re.fullmatch(r"iteration (\d+) evaluation (\d+)\n", out.stdout).groups()
    state, history, _, _ = h5io.read_checkpoint(tmp_path / "ckpt.h5")
    assert state["line_evals"] > 0 and len(history) == int(iteration) > 0

    log, model = resume(tmp_path, patches_40k)
    assert f"resumed from iteration {iteration}, evaluation {evaluation}" in log
    assert_same_bits(model, uninterrupted)


def tamper(checkpoint, key, value):
    with h5py.File(checkpoint, "r+") as f:
        saved = json.loads(f.attrs["fingerprint"])
        saved[key] = value
        f.attrs["fingerprint"] = json.dumps(saved)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("beta", "beta"),
        (("numpy", "1.26.4"), "numpy"),
        (("optimizer", {"name": "lbfgs-compact-wolfe", "version": 2, "memory": 5}), "optimizer"),
    ],
    ids=["config", "numpy", "an older optimizer (version 2, before the split)"],
)
def test_a_checkpoint_from_another_config_optimizer_or_numpy_is_not_used(
    tmp_path, patches_40k, change, reason
):
    proc = start_training(tmp_path, patches_40k)
    wait_for_iteration(tmp_path, 12)
    for pid in rank_pids(proc.pid):
        os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=30)
    args = train_args(patches_40k, tmp_path / "model.h5", iterations=20)
    if change == "beta":
        args[args.index("--beta") + 1] = 2.0
    else:
        tamper(tmp_path / "ckpt.h5", *change)
    out = mpirun(2, *args, "--checkpoint", tmp_path / "ckpt.h5")
    assert f"is from a different config, data, optimizer or numpy ({reason}): not used" in out.stderr
    assert "resumed" not in out.stderr
    with h5py.File(tmp_path / "model.h5") as f:
        assert len(f.attrs["resumed_from"]) == 0 and f.attrs["iterations"] == 20


def test_streaming_a_shard_larger_than_the_cap_gives_the_same_model_in_less_memory(tmp_path):
    patches = make_patches_file(tmp_path / "p.h5", 60000)  # 15.6 MB in float32 blocks on one rank
    whole = mpirun(1, *train_args(patches, tmp_path / "a.h5", iterations=8))
    streamed = mpirun(1, *train_args(patches, tmp_path / "b.h5", iterations=8), "--memory-mb", 1)
    assert "streaming them from HDF5" in streamed.stderr and "streaming them" not in whole.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for name in ("W1", "W2", "b1", "b2"):
            assert np.array_equal(a[name][()], b[name][()])
        assert b.attrs["streamed"] and not a.attrs["streamed"]
        saved = a.attrs["peak_rss_mb_max"] - b.attrs["peak_rss_mb_max"]
        # Streaming holds about 1 MB of patches instead of the whole shard.
        assert saved > a.attrs["shard_mb_max"] - 1 - 6
    # A cap whose pieces hold whole HDF5 chunks (they end on chunk boundaries), on 2 ranks.
    mpirun(2, *train_args(patches, tmp_path / "c.h5", iterations=8), "--memory-mb", 6)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "c.h5") as c:
        assert c.attrs["streamed"] and np.array_equal(a["W1"][()], c["W1"][()])


def test_streaming_works_on_several_ranks(tmp_path, patches_1001):
    for ranks, extra in ((1, []), (3, ["--memory-mb", 0.01])):
        mpirun(ranks, *train_args(patches_1001, tmp_path / f"m{ranks}.h5", iterations=5), *extra)
    with h5py.File(tmp_path / "m1.h5") as a, h5py.File(tmp_path / "m3.h5") as b:
        assert b.attrs["streamed"] and np.array_equal(a["W1"][()], b["W1"][()])


def test_rereading_stored_chunks_gives_the_rows_read_checks(tmp_path):
    """PatchRows.reread (chunks as stored, for streamed passes after the first) = PatchRows.read."""
    patches = make_patches_file(tmp_path / "p.h5", 3 * h5io.ROWS_PER_CHUNK + 100)
    out = np.empty((5000, 64), dtype=np.float32)
    with h5io.PatchRows(patches) as rows:
        assert rows.chunk_rows == h5io.ROWS_PER_CHUNK
        for start, stop in ((0, 5000), (4000, 8192), (12000, 12388), (8191, 8193)):
            assert np.array_equal(rows.reread(start, stop, out), rows.read(start, stop))


def test_truncated_patches_file_is_one_clear_error(tmp_path, patches_1001):
    bad = tmp_path / "patches.h5"
    shutil.copy(patches_1001, bad)
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    proc = mpirun(2, *train_args(bad, tmp_path / "model.h5"), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and str(bad) in errors[0]
    assert not (tmp_path / "model.h5").exists()


@pytest.mark.parametrize("extra", [[], ["--memory-mb", 0.01]], ids=["in memory", "streamed"])
def test_corrupt_patches_data_is_detected_by_the_checksum(tmp_path, patches_1001, extra):
    bad = tmp_path / "patches.h5"
    shutil.copy(patches_1001, bad)
    with h5py.File(bad) as f:
        offset = f["patches"].id.get_chunk_info(0).byte_offset
    with open(bad, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\x7f" * 64)
    proc = mpirun(2, *train_args(bad, tmp_path / "model.h5"), *extra, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1
    assert re.search(r"cannot read rows 0-\d+, damaged file", errors[0])
    assert "filter returned failure" in errors[0]
    assert not (tmp_path / "model.h5").exists()


def test_patches_file_from_another_config_is_refused(tmp_path, patches_1001):
    proc = mpirun(2, *train_args(patches_1001, tmp_path / "model.h5"), "--expect-count", 5000, check=False)
    assert proc.returncode != 0
    assert "made with patches.count = 1001, but the config says 5000" in proc.stderr
    proc = mpirun(1, *train_args(patches_1001, tmp_path / "model.h5"), "--expect-seed", 3, check=False)
    assert "made with patches.seed = 0, but the config says 3" in proc.stderr
    assert not (tmp_path / "model.h5").exists()


@contextlib.contextmanager
def small_filesystem(path, kilobytes):
    """A real tmpfs of the given size mounted at path: a disk that fills up."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root", "the full-disk tests")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_on_output_is_one_error_and_keeps_the_earlier_model(tmp_path, patches_1001):
    with small_filesystem(tmp_path / "disk", 64) as disk:
        model = disk / "model.h5"
        mpirun(2, *train_args(patches_1001, model, iterations=3))  # about 40 kB: fits once
        before = model.read_bytes()
        proc = mpirun(2, *train_args(patches_1001, model, iterations=5), check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1
        assert f"cannot write {model}" in errors[0] and "No space left" in errors[0]
        assert model.read_bytes() == before  # the earlier result is intact
        assert sorted(p.name for p in disk.iterdir()) == ["model.h5"]  # no temporary left


def test_a_full_disk_while_sampling_patches_keeps_the_earlier_file(tmp_path):
    from conftest import SCRIPTS, run, smooth_images

    images = tmp_path / "images.h5"
    h5io.write_images(images, zip(smooth_images(), "abc", ["0" * 64] * 3, strict=True), False, 0.1)
    with small_filesystem(tmp_path / "disk", 200) as disk:
        out = disk / "patches.h5"
        sample = [sys.executable, SCRIPTS / "sample_patches.py", images, out, "--side", 8, "--seed", 0]
        run([*sample, "--count", 100])
        before = out.read_bytes()
        proc = run([*sample, "--count", 5000], check=False)  # 1.3 MB: does not fit
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {out}: ")
        assert out.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["patches.h5"]


def test_a_full_disk_while_writing_images_keeps_the_earlier_file(tmp_path):
    """images.h5 grows image by image: the disk fills up after some are written."""
    from conftest import SCRIPTS, run, smooth_images

    files = []
    for k, img in enumerate(smooth_images(8, 64)):
        files.append(tmp_path / f"{k}.npy")
        np.save(files[-1], img)
    with small_filesystem(tmp_path / "disk", 200) as disk:
        out = disk / "images.h5"
        (tmp_path / "one").write_bytes(bytes(files[0]) + b"\0")
        (tmp_path / "all").write_bytes(b"".join(bytes(f) + b"\0" for f in files))
        load = [sys.executable, SCRIPTS / "load_images.py", out, "--files-from"]
        run([*load, tmp_path / "one"])
        before = out.read_bytes()
        proc = run([*load, tmp_path / "all"], check=False)  # 8 x 32 kB: does not fit beside the first
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {out}: No space left")
        assert f"image 1: {files[0]}: 64 x 64" in proc.stderr  # it failed on the way, not up front
        assert out.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["images.h5"]


def snakemake_training(folder, name, config) -> list:
    """The Snakemake command training results/model.h5 in ``folder`` with ``config`` (written to ``name``)."""
    (folder / name).write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "snakemake", "results/model.h5", "--cores", "2", "--configfile", name]


def test_workflow_retries_a_killed_training_and_resumes(workflow_copy):
    """Snakemake's retries: a rank killed mid-training, the next attempt resumes and ends bit for bit."""
    config = {
        "patches": {"count": 40000},
        "train": {"iterations": ITERATIONS, "ranks": 2, "checkpoint_every": 5},
    }
    cmd = snakemake_training(workflow_copy, "small.yaml", config)
    proc = subprocess.Popen(cmd, cwd=workflow_copy, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    log_dir = workflow_copy / "results" / "logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = log_dir / "train.log"
        done = re.findall(r"iteration +(\d+)/", log.read_text()) if log.exists() else []
        if done and int(done[-1]) >= 12:  # progress lines come in batches (cli.FLUSH_SECONDS)
            break
        time.sleep(0.02)
    victims = training_ranks(proc.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    log = (log_dir / "train.log").read_text()
    resumed = re.search(r"resumed from iteration (\d+),", log)
    assert resumed, log
    assert 10 <= int(resumed.group(1)) < ITERATIONS and int(resumed.group(1)) % 5 == 0
    model = read_model(workflow_copy / "results" / "model.h5")
    assert list(model[1]["resumed_from"]) == [int(resumed.group(1))]
    # the uninterrupted training of the same config (the defaults train_args passes) on the same patches
    patches = workflow_copy / "results" / "patches.h5"
    mpirun(2, *train_args(patches, workflow_copy / "ref.h5", iterations=ITERATIONS))
    assert_same_bits(model, read_model(workflow_copy / "ref.h5"))


FAULT_SEED = 24  # the fault sequence of the fault-injection test: change it to try another, keep it to replay


def training_ranks(pid) -> dict[int, int]:
    """{rank: pid} of the training's ranks among the processes below ``pid`` (a Snakemake run)."""
    found = {}
    for child in rank_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"train_model.py" in f.read():
                    found[rank_of(child)] = child
        except OSError:  # gone meanwhile
            continue
    return found


def alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_ten_random_faults_on_random_ranks_end_in_the_uninterrupted_model(workflow_copy):
    """Fault injection: ten faults one after another, each a signal drawn from SIGKILL, SIGTERM and
    SIGINT, sent to a rank drawn at random, at a random moment of an attempt (from its start-up
    to well into its loop). Snakemake's retries (the rule's two), then new Snakemake runs, carry
    the training to its end. Each fault ends its attempt within 30 s, and the final model is
    bitwise the uninterrupted one. The faults come from a Generator seeded with FAULT_SEED; a
    failure lists them, to replay."""
    ranks, iterations = 2, 2000
    config = {"train": {"iterations": iterations, "ranks": ranks, "checkpoint_every": 5}}
    cmd = snakemake_training(workflow_copy, "faults.yaml", config)
    rng = np.random.default_rng(FAULT_SEED)
    faults, runs = [], []
    log = open(workflow_copy / "snakemake.out", "w")

    def start():
        runs.append(subprocess.Popen(cmd, cwd=workflow_copy, env=env(), stdout=log, stderr=subprocess.STDOUT))

    start()
    try:
        while len(faults) < 10:
            deadline = time.monotonic() + 180
            while len(attempt := training_ranks(runs[-1].pid)) < ranks:  # the next attempt's ranks
                if runs[-1].poll() is not None:  # this run gave up after its retries: a new run
                    assert not (workflow_copy / "results" / "model.h5").exists(), (
                        f"done before 10 faults: {faults}"
                    )
                    start()
                assert time.monotonic() < deadline, f"no attempt within 180 s; faults so far: {faults}"
                time.sleep(0.01)
            rank = int(rng.integers(ranks))
            sig = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT][int(rng.integers(3))]
            moment = float(rng.uniform(0.2, 1.6))  # seconds after the ranks started
            time.sleep(moment)
            sent = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(attempt[rank], sig)
            while any(alive(pid) for pid in attempt.values()):
                assert time.monotonic() - sent < 30, (
                    f"fault {len(faults) + 1} did not end its attempt: {faults}"
                )
                time.sleep(0.01)
            faults.append((rank, sig.name, round(moment, 2), round(time.monotonic() - sent, 2)))
        while runs[-1].wait(timeout=600) != 0:  # the last fault may have ended a run's last retry
            assert len(runs) < 20, f"no run finished the training: {faults}"
            start()
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        log.close()
    text = (workflow_copy / "results" / "logs" / "train.log").read_text()
    assert "resumed from iteration" in text, faults
    patches = workflow_copy / "results" / "patches.h5"
    mpirun(ranks, *train_args(patches, workflow_copy / "ref.h5", iterations=iterations))
    model, reference = (
        read_model(workflow_copy / "results" / "model.h5"),
        read_model(workflow_copy / "ref.h5"),
    )
    for name in PARAMS:
        assert model[0][name].tobytes() == reference[0][name].tobytes(), (name, faults)
    assert np.array_equal(model[0]["history"][:, :2], reference[0]["history"][:, :2]), faults
    assert model[1]["cost"] == reference[1]["cost"] and len(model[1]["resumed_from"]) >= 1, faults


def test_rereading_a_file_cut_short_since_is_one_clear_error(tmp_path):
    """A file truncated after the checked pass: reread's direct reads come up short, one SaeError."""
    patches = make_patches_file(tmp_path / "p.h5", 2 * h5io.ROWS_PER_CHUNK)
    out = np.empty((h5io.ROWS_PER_CHUNK, 64), dtype=np.float32)
    with h5io.PatchRows(patches) as rows:
        rows.read(h5io.ROWS_PER_CHUNK, 2 * h5io.ROWS_PER_CHUNK)
        with open(patches, "r+b") as f:
            f.truncate(os.path.getsize(patches) - 1000)
        with pytest.raises(SaeError, match="cannot read rows 4096-8192, damaged file"):
            rows.reread(h5io.ROWS_PER_CHUNK, 2 * h5io.ROWS_PER_CHUNK, out)


def test_rereading_without_os_preadv_reads_through_hdf5(tmp_path, monkeypatch):
    """Where Python has no os.preadv, reread falls back to HDF5's read: the same rows."""
    patches = make_patches_file(tmp_path / "p.h5", 2 * h5io.ROWS_PER_CHUNK + 7)
    monkeypatch.delattr(os, "preadv")
    out = np.empty((4200, 64), dtype=np.float32)
    with h5io.PatchRows(patches) as rows:
        assert rows.fd is None
        assert np.array_equal(rows.reread(4000, 8199, out), rows.read(4000, 8199))
