"""Logging of the entry scripts: progress lines in batches, errors at once and last."""

import io
import logging
import sys
import textwrap
import time

from conftest import SCRIPTS, run
from sae import cli


def batched_logger(interval):
    stream = io.StringIO()
    handler = cli.BatchedStreamHandler(stream, interval=interval)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test_cli.{interval}.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log, handler, stream


def test_progress_lines_wait_for_the_interval_then_come_in_order():
    log, handler, stream = batched_logger(interval=60.0)
    for i in range(3):
        log.info("iteration %d", i)
    assert stream.getvalue() == ""
    handler.flush()
    assert stream.getvalue() == "INFO iteration 0\nINFO iteration 1\nINFO iteration 2\n"


def test_a_line_after_the_interval_writes_the_batch():
    log, _, stream = batched_logger(interval=0.05)
    log.info("first")
    time.sleep(0.06)
    log.info("second")
    assert stream.getvalue() == "INFO first\nINFO second\n"


def test_a_warning_writes_at_once_after_what_was_pending():
    log, _, stream = batched_logger(interval=60.0)
    log.info("progress")
    log.warning("checkpoint not used")
    assert stream.getvalue() == "INFO progress\nWARNING checkpoint not used\n"


def test_a_message_is_rendered_when_logged_not_when_written():
    log, handler, stream = batched_logger(interval=60.0)
    values = [1]
    log.info("values %s", values)
    values.append(2)
    handler.flush()
    assert stream.getvalue() == "INFO values [1]\n"


def test_the_error_line_comes_last_after_every_pending_line(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging, sys
            sys.path.insert(0, {str(SCRIPTS)!r})
            from sae import SaeError, cli

            def body():
                for i in range(3):
                    logging.getLogger("t").info("iteration %d", i)
                raise SaeError("bad data")

            cli.main(body)
            """
        )
    )
    proc = run([sys.executable, script], check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert [line.split(" ", 1)[1] for line in lines[:3]] == [f"iteration {i}" for i in range(3)]
    assert lines[3:] == ["error: bad data"]
