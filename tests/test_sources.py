"""Pair sources by URI: a local folder, an object-store prefix (a real S3 API, moto_server on
loopback) and manifests (CSV, Parquet) give the same pairs, the same split and the same errors,
each naming the object or the manifest row."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.fs
import pyarrow.parquet
import pytest
from conftest import REPO, SAMPLES
from s3_server import S3Server, start_s3_server

from adaray.data import PairError, check_pairs, discover_pairs, read_image, read_pair, split_pairs
from adaray.data.location import Location

TASKS = ("ivf", "mef", "mff", "mif")
BUCKET = "fusion"
PREFIX = f"s3://{BUCKET}/samples"
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        with server.activate():
            server.create_bucket(BUCKET)
            assert server.upload_tree(SAMPLES, PREFIX) > 20
            yield server
    finally:
        server.stop()


def _names(pairs) -> list[tuple[str, str, str, str]]:
    return [(p.group, p.stem, p.a_path.name, p.b_path.name) for p in pairs]


@pytest.mark.parametrize("task", TASKS)
def test_a_prefix_in_object_storage_pairs_and_splits_as_the_folder_does(s3, task):
    local, remote = discover_pairs(SAMPLES, task), discover_pairs(PREFIX, task)
    assert _names(remote) == _names(local) and remote
    assert all(str(p.a_path).startswith(f"{PREFIX}/") for p in remote)
    assert [_names(part) for part in split_pairs(remote, 0.3)] == [
        _names(part) for part in split_pairs(local, 0.3)]
    a_local, b_local = read_pair(local[0])
    a_remote, b_remote = read_pair(remote[0])
    assert np.array_equal(a_local, a_remote) and np.array_equal(b_local, b_remote)


def test_explicit_a_and_b_folders_under_a_prefix(s3):
    pairs = discover_pairs(f"{PREFIX}/IVF", "ivf", a_dir="infrared", b_dir="visible")
    assert _names(pairs) == _names(discover_pairs(SAMPLES / "IVF", "ivf", a_dir="infrared",
                                                  b_dir="visible"))


def _manifest_rows(pairs, root: str) -> list[dict[str, str]]:
    """Rows of a manifest naming `pairs` relative to `root` (a local folder or a prefix)."""
    return [{"a": str(p.a_path).removeprefix(root + "/"),
             "b": str(p.b_path).removeprefix(root + "/"), "group": p.group} for p in pairs]


def _csv(rows: list[dict[str, str]]) -> bytes:
    lines = ["a,b,group", *(f"{r['a']},{r['b']},{r['group']}" for r in rows)]
    return ("\n".join(lines) + "\n").encode()


def test_manifests_in_a_folder_or_a_bucket_list_the_same_pairs(s3, tmp_path):
    folder_pairs = discover_pairs(SAMPLES, "mif")
    rows = _manifest_rows(folder_pairs, str(SAMPLES))
    # A CSV manifest in the bucket, naming objects relative to itself.
    s3.put(f"{PREFIX}/mif.csv", _csv(rows))
    from_bucket = discover_pairs(f"{PREFIX}/mif.csv", "mif")
    assert _names(from_bucket) == _names(folder_pairs)
    assert str(from_bucket[0].a_path).startswith(f"{PREFIX}/")
    # A local Parquet manifest naming the objects by URI; without `group` the group is the
    # folder above A's folder, as for folders.
    table = pyarrow.table({"a": [f"{PREFIX}/{r['a']}" for r in rows],
                           "b": [f"{PREFIX}/{r['b']}" for r in rows]})
    pyarrow.parquet.write_table(table, tmp_path / "mif.parquet")
    by_uri = discover_pairs(tmp_path / "mif.parquet", "mif")
    assert _names(by_uri) == _names(folder_pairs)
    # A local CSV manifest of local files.
    (tmp_path / "local.csv").write_bytes(_csv(_manifest_rows(folder_pairs, str(SAMPLES))))
    (tmp_path / "MIF").symlink_to(SAMPLES / "MIF")
    (tmp_path / "MIF-PET").symlink_to(SAMPLES / "MIF-PET")
    assert _names(discover_pairs(tmp_path / "local.csv", "mif")) == _names(folder_pairs)


def test_bad_sources_fail_naming_the_bucket_object_or_row(s3, tmp_path):
    with pytest.raises(PairError, match=r"data folder s3://no-such-bucket/x does not exist"):
        discover_pairs("s3://no-such-bucket/x", "ivf")
    with pytest.raises(PairError, match=rf"data folder {PREFIX}/nothing-here does not exist"):
        discover_pairs(f"{PREFIX}/nothing-here", "ivf")

    # An image without a partner, as for a folder.
    ivf = discover_pairs(PREFIX, "ivf")
    copy = f"s3://{BUCKET}/unmatched/IVF"
    for pair in ivf:
        s3.put(f"{copy}/infrared/{pair.a_path.name}", pair.a_path.read_bytes())
        s3.put(f"{copy}/visible/{pair.b_path.name}", pair.b_path.read_bytes())
    s3.put(f"{copy}/infrared/extra.png", ivf[0].a_path.read_bytes())
    with pytest.raises(PairError, match=rf"1 image\(s\) in {copy}/infrared have no partner in "
                                        rf"{copy}/visible: extra"):
        discover_pairs(f"s3://{BUCKET}/unmatched", "ivf")

    # A corrupt object: the check before training names it.
    broken = f"s3://{BUCKET}/broken/IVF"
    for pair in ivf:
        s3.put(f"{broken}/infrared/{pair.a_path.name}", pair.a_path.read_bytes())
        s3.put(f"{broken}/visible/{pair.b_path.name}", pair.b_path.read_bytes())
    s3.put(f"{broken}/visible/{ivf[1].b_path.name}", b"not an image")
    with pytest.raises(PairError, match=rf"1 of {len(ivf)} pairs are unusable:\n  "
                                        rf"{broken}/visible/{ivf[1].b_path.name}: not a "
                                        "readable image"):
        check_pairs(discover_pairs(f"s3://{BUCKET}/broken", "ivf"))
    with pytest.raises(Exception, match=rf"{PREFIX}/IVF/visible/gone.png: cannot read file"):
        read_image(f"{PREFIX}/IVF/visible/gone.png")

    # A manifest naming a missing object: the row and the URI.
    rows = _manifest_rows(ivf, PREFIX)
    rows[1]["b"] = "IVF/visible/gone.png"
    s3.put(f"{PREFIX}/bad.csv", _csv(rows))
    with pytest.raises(PairError, match=rf"names 1 missing file\(s\): row 3: "
                                        rf"{PREFIX}/IVF/visible/gone.png"):
        discover_pairs(f"{PREFIX}/bad.csv", "ivf")
    (tmp_path / "columns.csv").write_text("left,right\nx.png,y.png\n")
    with pytest.raises(PairError, match=r"columns.csv: no column 'a' \(needs a, b"):
        discover_pairs(tmp_path / "columns.csv", "ivf")
    with pytest.raises(PairError, match="is a manifest: it pairs its files itself"):
        discover_pairs(tmp_path / "columns.csv", "ivf", a_dir="x", b_dir="y")


def test_locations_name_local_paths_and_uris_alike(tmp_path):
    local = Location.of(tmp_path / "a" / ".." / "b.png")
    assert str(local) == str(tmp_path / "b.png") and local.is_local
    assert Path(local) == tmp_path / "b.png"  # a local Location is a path
    remote = Location.of("s3://bucket/x/y.png/")
    assert (str(remote), remote.name, remote.stem, str(remote.parent)) == (
        "s3://bucket/x/y.png", "y.png", "y", "s3://bucket/x")
    assert str(remote.parent / "z" / "w.jpg") == "s3://bucket/x/z/w.jpg"
    assert str(remote.parent / "s3://other/k") == "s3://other/k"
    with pytest.raises(TypeError, match="not a local path"):
        Path(remote)


@pytest.mark.slow  # starts its own Ray, twice
@pytest.mark.timeout(420)
def test_train_reads_pairs_from_s3_checkpoints_to_s3_and_resumes(s3, tmp_path):
    """`adaray train` with `--data s3://...` and `--storage s3://...` on its own local Ray
    (whose workers inherit the S3 endpoint and credentials, as nodes with an instance role
    would), then the same command with more steps continues from the checkpoint in S3."""
    from ray_cluster import own_ray_process

    adaray = str(Path(sys.executable).parent / "adaray")
    storage = f"s3://{BUCKET}/runs"

    def train(max_steps: int, log: Path) -> str:
        command = [adaray, "train", "--task", "ivf", "--data", PREFIX, "--config",
                   str(TINY), "--max-steps", str(max_steps), "--storage", storage,
                   "--name", "s3run", "--set", f"run.workdir={tmp_path / 'work'}",
                   "--set", "log_every=5", "--set", "ckpt_every=10", "--set", "val_every=10"]
        with own_ray_process(command, log, "adaray-s3-") as (process, _):
            code = process.wait(timeout=300)
        text = log.read_text()
        assert code == 0, text[-4000:]
        return text

    first = train(10, tmp_path / "first.log")
    assert "finished at step 10" in first
    assert f"all checkpoints: {storage}/s3run" in first
    checkpoints = [info.path for info in s3.filesystem().get_file_info(
        pyarrow.fs.FileSelector(f"{BUCKET}/runs/s3run", recursive=False))
        if info.type == pyarrow.fs.FileType.Directory
        and info.base_name.startswith("checkpoint_")]
    assert len(checkpoints) == 1
    second = train(20, tmp_path / "second.log")
    steps = [int(s) for s in re.findall(r"\[adaray train\] step (\d+)/20", second)]
    assert steps and steps[0] == 15, steps  # continued after the checkpoint at step 10
    assert "finished at step 20" in second
