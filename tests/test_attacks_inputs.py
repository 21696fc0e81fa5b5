"""Attacks on the product's inputs and outputs (issue #23): credentials written into object-store
URIs, symbolic links under --train, a quarantine file score did not write, and data or output
errors that used to end in a traceback. Each runs the real entry point up to the check that
stops it, before Ray or MLflow start, on real Parquet files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from components.datasets.contract import DataError, ReadPlan, resolve_shards
from components.evaluation.batch_scoring import check_quarantine, write_quarantine
from components.runtime import storage
from components.tracking.redaction import redact
from pipelines.__main__ import DEBUG_ENV, EXIT_USAGE, main
from tests.media_bytes import photo_bytes

ROOT = Path(__file__).resolve().parents[1]
KEY_ID = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example pair
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # a real secret key may hold '/'


def _shard(path: Path, pairs: int = 3, start: int = 0) -> Path:
    """A canonical shard of ``pairs`` real PNG pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "pair_id": [f"p{start + i}" for i in range(pairs)],
        "chosen": [photo_bytes(16, seed=2 * (start + i)) for i in range(pairs)],
        "rejected": [photo_bytes(16, seed=2 * (start + i) + 1) for i in range(pairs)],
    }), path)
    return path


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipelines ...`` as a scheduler runs it."""
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, env={**os.environ, **(env or {})})


def _main(args: list[str], tmp_path: Path, capsys) -> tuple[int, dict, str]:
    """``main`` in this process: exit code, the --summary JSON, what went to stderr."""
    summary = tmp_path / "summary.json"
    rc = main([*args, "--summary", str(summary)])
    err = capsys.readouterr().err
    return rc, json.loads(summary.read_text()), err


# --- 1. Credentials in object-store URIs ------------------------------------------------------


def test_credentials_in_an_object_store_uri_are_refused_and_never_printed(tmp_path):
    """The README used to document ``s3://KEY:SECRET@bucket``; pyarrow then failed with the
    secret in its message, printed to stdout, stderr and the --summary file. Now: exit 2
    before anything runs, one problem per option, pointing to the environment."""
    train = f"s3://{KEY_ID}:{SECRET}@bucket/pairs/train/"
    summary = tmp_path / "summary.json"
    res = _cli(["run", "image", "--train", train,
                "--storage", f"s3://{KEY_ID}:{SECRET}@bucket/runs",
                "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--summary", str(summary)])
    assert res.returncode == EXIT_USAGE, res.stderr[-2000:]
    recorded = res.stdout + res.stderr + summary.read_text()
    assert SECRET not in recorded and SECRET.split("/")[0] not in recorded
    assert KEY_ID not in recorded
    assert "Traceback" not in res.stderr
    for key in ("data.train", "storage.uri"):
        assert f"{key}: credentials written into an object-store URI are refused" in res.stderr
    assert "AWS_ACCESS_KEY_ID" in res.stderr and "IRSA" in res.stderr
    assert "no longer accepted" in res.stderr and "pass s3://bucket/pairs/train" in res.stderr
    assert json.loads(summary.read_text())["status"] == "failed"
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow


@pytest.mark.parametrize("where", ["--eval", "config-file", "override", "score --input",
                                   "evaluate --model", "gs", "key only", "query"])
def test_every_uri_option_and_config_key_refuses_credentials(where, tmp_path, capsys):
    train = str(_shard(tmp_path / "train" / "a.parquet"))
    bad = f"s3://{KEY_ID}:{SECRET}@bucket/x"
    run = ["run", "image", "--train", train, "--tracking-uri",
           f"sqlite:///{tmp_path / 'mlflow.db'}"]
    if where == "--eval":
        args = [*run, "--eval", bad]
    elif where == "config-file":
        (tmp_path / "c.yaml").write_text(f"storage:\n  uri: {bad}\n")
        args = [*run, "--config", str(tmp_path / "c.yaml")]
    elif where == "override":
        args = [*run, f"loss.reference={bad}"]
    elif where == "score --input":
        args = ["score", "--model", "models:/m@champion", "--input", bad,
                "--output", str(tmp_path / "o")]
    elif where == "evaluate --model":
        args = ["evaluate", "--model", bad, "--data", train]
    elif where == "gs":
        args = [*run, "--eval", f"gs://user:{SECRET}@bucket/x"]
    elif where == "key only":
        args = [*run, "--eval", f"s3://{KEY_ID}@bucket/x"]
    else:
        args = [*run, "--eval", f"s3://bucket/x?access_key={KEY_ID}&secret_key={SECRET}"]
    rc, summary, err = _main(args, tmp_path, capsys)
    assert rc == EXIT_USAGE, summary
    assert "credentials written into an object-store URI are refused" in summary["reason"]
    assert SECRET not in err + json.dumps(summary) and KEY_ID not in err + json.dumps(summary)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_mistyped_option_does_not_echo_its_credential(capsys):
    """argparse quotes the command line in its errors; a typo next to a credential URI must
    not print it."""
    with pytest.raises(SystemExit) as e:
        main(["run", "image", "--train", "x", "--store", f"s3://{KEY_ID}:{SECRET}@bucket/x"])
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USAGE and "unrecognized arguments: --store" in err
    assert SECRET not in err and KEY_ID not in err


@pytest.mark.parametrize("uri", ["abfs://container@account.dfs.core.windows.net/pairs",
                                 "s3://bucket/logs/user@example.com/part.parquet",
                                 "https://alice:pw@mlflow.example.com",
                                 "postgresql://mlflow:pw@db/mlflow", "s3://bucket/a:b@c"])
def test_uris_without_an_object_store_credential_are_not_refused(uri):
    assert storage.credential_problem("x", uri) is None


def test_pyarrows_own_message_about_a_credential_uri_is_redacted():
    """The message the issue found, produced by pyarrow itself: the URI without its scheme."""
    with pytest.raises(pa.ArrowInvalid) as e:
        pafs.S3FileSystem(region="us-east-1").get_file_info(f"{KEY_ID}:{SECRET}@bucket/x")
    assert SECRET in str(e.value)
    shown = redact(f"{type(e.value).__name__}: {e.value}")
    assert SECRET not in shown and KEY_ID not in shown and "***:***@bucket/x" in shown


@pytest.mark.parametrize("raw,expected", [
    (f"got a URI: '{KEY_ID}:{SECRET}@bucket/x'", "got a URI: '***:***@bucket/x'"),
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/x", "s3://AKIAEXAMPLE:***@bucket/x"),
    (f"InvalidAccessKeyId: key {KEY_ID} does not exist", "InvalidAccessKeyId: key *** does not exist"),
    ("session ASIAXXXXXXXXXXXXXXXX expired", "session *** expired"),
    (f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}",
     "[default]\naws_access_key_id = ***\naws_secret_access_key = ***"),
    (f"{{'AccessKeyId': '{KEY_ID}', 'SecretAccessKey': '{SECRET}', 'SessionToken': 'IQoJb3J//pZ2'}}",
     "{'AccessKeyId': '***', 'SecretAccessKey': '***', 'SessionToken': '***'}"),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}%2F20261207%2Fus-east-1&"
     "X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027&X-Amz-Security-Token=FQoGZX",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"
     "&X-Amz-Security-Token=***"),
    (f"Authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20261207/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=fe5f80f77d5fa3", "Authorization: ***"),
    ("headers {'Authorization': 'Basic YWxpY2U6c2VjcmV0'}", "headers {'Authorization': 'Basic ***'}"),
    ("https://acct.blob.core.windows.net/c/x?sv=2022&sig=abc%2Bdef", "https://acct.blob.core.windows.net/c/x?sv=2022&sig=***"),
    ("connect token=abcdef123456 failed", "connect token=*** failed"),
    ("password: hunter22", "password: ***"),
    # Innocent text stays as it was.
    ("data.max_prompt_tokens: must be > 0, got -1", "data.max_prompt_tokens: must be > 0, got -1"),
    ("max_tokens=77 signature: inputs ['image']", "max_tokens=77 signature: inputs ['image']"),
    ("rayproject/ray:2.60.0@sha256:abc and ray:2.60.0@sha256:abc",
     "rayproject/ray:2.60.0@sha256:abc and ray:2.60.0@sha256:abc"),
    ("mail bob@example.com at 12:30", "mail bob@example.com at 12:30"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    # MLflow's model URIs by alias (a summary's model_uri, the served model's name).
    ("loaded models:/image-scorer@champion", "loaded models:/image-scorer@champion"),
    ("runs:/0123456789abcdef/model@x", "runs:/0123456789abcdef/model@x"),
])
def test_redaction_masks_what_pyarrow_boto_and_http_print(raw, expected):
    assert redact(raw) == expected


def test_an_error_path_with_a_credential_is_redacted_in_stderr_summary_and_stdout(
        tmp_path, capsys):
    """A real data error whose message carries a credential-shaped path (a directory named
    after one): the one-line message on stderr, the summary file and stdout are all masked,
    and the summary stays valid JSON."""
    bad = tmp_path / f"{KEY_ID}:{SECRET.replace('/', '+')}@bucket" / "part-0.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet \\\" token=abc\"")
    summary = tmp_path / "summary.json"
    rc = main(["run", "image", "--train", str(bad.parent), "--summary", str(summary),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    out, err = capsys.readouterr()
    assert rc == EXIT_USAGE, err
    for text in (out, err, summary.read_text()):
        assert KEY_ID not in text and SECRET.replace("/", "+") not in text, text
    assert json.loads(out.strip().splitlines()[-1])["status"] == "failed"
    assert "***:***@bucket" in json.loads(summary.read_text())["reason"]


def test_mlflow_params_tags_and_artifacts_are_redacted(tmp_path):
    """Params, tags and JSON artifacts go through the tracking layer's redaction; the forms
    pyarrow and boto print (no scheme, key ids, name=value) included."""
    import mlflow

    from components.tracking.runs import log_json_artifact, log_params_flat, setup

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup(uri, "redaction")
    leaky = f"'{KEY_ID}:{SECRET}@bucket/x' aws_secret_access_key={SECRET}"
    with mlflow.start_run() as run:
        log_params_flat({"reason": leaky})
        log_json_artifact({"error": leaky}, "error.json")
    client = mlflow.MlflowClient(uri)
    data = client.get_run(run.info.run_id).data
    with open(client.download_artifacts(run.info.run_id, "error.json", str(tmp_path))) as f:
        artifact = f.read()
    for text in (json.dumps(data.params), json.dumps(data.tags), artifact):
        assert SECRET not in text and KEY_ID not in text, text


# --- 5. Symbolic links under --train ----------------------------------------------------------


def test_a_link_to_the_directory_itself_lists_each_shard_once_and_warns(tmp_path, caplog):
    """`train/loop -> .` used to list the same shard 41 times (glob follows the link until
    the path is too long), every row after the first counted as a duplicate."""
    shard = _shard(tmp_path / "train" / "a.parquet")
    os.symlink(".", tmp_path / "train" / "loop")
    with caplog.at_level(logging.WARNING):
        shards = resolve_shards([str(tmp_path / "train")])
    assert [s.uri for s in shards] == [str(shard)]
    assert ReadPlan.of(shards, "auto", "image").rows == 3
    assert f"{tmp_path / 'train' / 'loop'} repeats {tmp_path / 'train'}" in caplog.text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", ["train", "train/**/*.parquet"])
def test_two_link_cycles_do_not_hang_shard_resolution(tmp_path, spec):
    """Two links to `.` hung resolution (each level doubles the paths glob walks)."""
    shard = _shard(tmp_path / "train" / "sub" / "a.parquet")
    for name in ("x", "y"):
        os.symlink(".", tmp_path / "train" / name)
    os.symlink("..", tmp_path / "train" / "sub" / "up")
    t0 = time.perf_counter()
    shards = resolve_shards([str(tmp_path / spec)])
    assert [s.uri for s in shards] == [str(shard)]
    assert time.perf_counter() - t0 < 5


def test_aliases_of_one_file_are_read_once_by_its_real_path_and_named(tmp_path, caplog):
    """A file linked under another name, a directory linked from outside the tree, and a spec
    that names a file again: each real file once, named by its real path, aliases reported."""
    a = _shard(tmp_path / "data" / "a.parquet")
    b = _shard(tmp_path / "other" / "b.parquet", start=3)
    os.symlink(a, tmp_path / "data" / "alias.parquet")
    os.symlink(tmp_path / "other", tmp_path / "data" / "more")  # not a cycle: followed
    with caplog.at_level(logging.WARNING):
        shards = resolve_shards([str(tmp_path / "data"), str(tmp_path / "data" / "alias.parquet")])
    assert [s.uri for s in shards] == [str(a), str(b)]
    assert [s.path for s in shards] == [str(a), str(b)]
    assert f"{a} (as {tmp_path / 'data' / 'a.parquet'}, {tmp_path / 'data' / 'alias.parquet'})" \
        in caplog.text
    assert f"{a} (by {tmp_path / 'data' / 'alias.parquet'} and {tmp_path / 'data'})" in caplog.text
    assert ReadPlan.of(shards, "auto", "image").rows == 6


def test_a_dangling_link_is_a_data_error_naming_it(tmp_path):
    _shard(tmp_path / "train" / "a.parquet")
    os.symlink(tmp_path / "gone.parquet", tmp_path / "train" / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: cannot be read .*gone\.parquet"):
        resolve_shards([str(tmp_path / "train")])


def test_recursive_globs_keep_globs_meaning(tmp_path):
    for rel in ("a.parquet", "d/b.parquet", "d/e/c.parquet", ".hidden/h.parquet", "d/x.txt"):
        _shard(tmp_path / rel)
    found = [Path(s.uri).relative_to(tmp_path).as_posix()
             for s in resolve_shards([str(tmp_path / "**" / "*.parquet")])]
    import glob

    expected = sorted(Path(p).relative_to(tmp_path).as_posix() for p in
                      glob.glob(str(tmp_path / "**" / "*.parquet"), recursive=True))
    assert found == expected == ["a.parquet", "d/b.parquet", "d/e/c.parquet"]


# --- 7. score never replaces a quarantine file it did not write -------------------------------


def test_score_refuses_to_replace_a_quarantine_file_it_did_not_write(tmp_path, capsys):
    candidates = tmp_path / "candidates.parquet"
    pq.write_table(pa.table({"image": [photo_bytes(16)]}), candidates)
    precious = tmp_path / "scored.quarantine.parquet"
    pq.write_table(pa.table({"mine": [1, 2, 3]}), precious)
    before = precious.read_bytes()
    args = ["score", "--model", "models:/nothing@champion", "--input", str(candidates),
            "--output", str(tmp_path / "scored"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    rc, summary, err = _main(args, tmp_path, capsys)
    assert rc == EXIT_USAGE, summary
    assert f"{precious} exists and was not written by visual-dpo score" in summary["reason"]
    assert "Remove it, choose another --output, or pass --overwrite" in err
    assert precious.read_bytes() == before and not (tmp_path / "mlflow.db").exists()
    # --overwrite covers it as it covers the output directory: past this check (the model
    # does not exist, so the command fails later, with the file still untouched).
    rc, summary, _ = _main([*args, "--overwrite"], tmp_path, capsys)
    assert "was not written by visual-dpo score" not in summary["reason"]
    assert precious.read_bytes() == before


def test_scores_own_quarantine_file_may_be_replaced_and_links_are_not_written_through(tmp_path):
    own = tmp_path / "o.quarantine.parquet"
    write_quarantine(pa.table({"shard": ["s"], "row": [0], "reason": ["bad"]}), str(own))
    check_quarantine(str(own), overwrite=False)  # ours: no error
    target = tmp_path / "elsewhere.parquet"
    pq.write_table(pa.table({"keep": [1]}), target)
    link = tmp_path / "l.quarantine.parquet"
    os.symlink(target, link)
    with pytest.raises(ValueError, match="was not written by visual-dpo score"):
        check_quarantine(str(link), overwrite=False)
    write_quarantine(pa.table({"shard": ["s"], "row": [0], "reason": ["bad"]}), str(link))
    assert pq.read_table(target).column_names == ["keep"] and not link.is_symlink()
    (tmp_path / "d.quarantine.parquet").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        check_quarantine(str(tmp_path / "d.quarantine.parquet"), overwrite=True)


# --- 10. Data and output errors: one line and exit 2, not a traceback and exit 1 --------------


@pytest.mark.parametrize("case", ["not parquet", "no shards", "output exists", "wrong type",
                                  "storage not writable"])
def test_data_and_output_errors_exit_2_with_one_line(case, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = tmp_path / "train"
    if case == "not parquet":
        train.mkdir()
        (train / "part-0.parquet").write_bytes(b"PAR1 not really")
    elif case == "wrong type":
        train.mkdir()
        pq.write_table(pa.table({"pair_id": ["a"], "chosen": [7], "rejected": [b"x"]}),
                       train / "part-0.parquet")
    elif case == "storage not writable":  # its nearest existing "directory" is a file
        _shard(train / "a.parquet")
        (tmp_path / "file").write_text("")
    if case == "output exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("keep")
        args = ["score", "--model", "models:/m@champion", "--input", str(train),
                "--output", str(tmp_path / "out"), "--tracking-uri", db]
    else:
        args = ["run", "image", "--train", str(train), "--tracking-uri", db,
                "--output-dir", str(tmp_path / "file" / "runs")]
    rc, summary, err = _main(args, tmp_path, capsys)
    assert rc == EXIT_USAGE, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert summary["status"] == "failed" and summary["reason"].split(":")[0] in (
        "DataError", "OutputExists", "StorageError")
    assert summary["reason"] in err


def test_unreadable_object_storage_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    """An S3 endpoint nobody answers on: a one-line DataError naming the spec, not pyarrow's
    OSError traceback."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rc, summary, err = _main(["run", "image", "--train", "s3://nobody/train",
                              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                             tmp_path, capsys)
    assert rc == EXIT_USAGE, err
    assert summary["reason"].startswith("DataError: s3://nobody/train: cannot list shards")
    assert "Traceback" not in err and "testing-secret" not in err


def test_the_exit_code_and_traceback_as_a_scheduler_sees_them(tmp_path, capsys, monkeypatch):
    """Through the real process: exit 2 and one line. VISUAL_DPO_DEBUG=1 adds the traceback."""
    args = ["run", "image", "--train", str(tmp_path / "nothing-here"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    res = _cli(args)
    assert res.returncode == EXIT_USAGE, res.stderr[-2000:]
    assert "no Parquet shards found" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["status"] == "failed"
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(args) == EXIT_USAGE
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_step_that_stops_on_bad_data_is_an_input_error_too():
    """Prepare raises DataError inside its step (a split with no usable pair): the CLI exits 2
    for the cause, as for the same error before the steps; any other step failure stays 1."""
    from components.tracking.steps import StepFailed
    from pipelines.__main__ import _user_error

    cause = DataError("train data: no usable pairs out of 10 rows read")
    try:
        raise StepFailed("prepare", "run-1", cause) from cause
    except StepFailed as e:
        assert _user_error(e) is cause
    try:
        raise StepFailed("train", "run-1", RuntimeError("CUDA error")) from RuntimeError()
    except StepFailed as e:
        assert _user_error(e) is None
