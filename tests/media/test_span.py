"""Spanning: a job larger than its medium becomes several complete, self-consistent media."""

from __future__ import annotations

from pathlib import Path

import mediakit as K
import pytest
from pydicom import dcmread

from dicombox.media.errors import MediaError
from dicombox.media.fileset import SourceInstance, build_fileset
from dicombox.media.iso import build_iso
from dicombox.media.span import OVERHEAD_BYTES, plan_volumes
from dicombox.media.writers import MediumState, OpticalWriter

import datagen

MB = 1_000_000
CT = "1.2.840.10008.5.1.4.1.1.2"


def fake(patient: str, study: str, series: str, n: int, size: int) -> list[SourceInstance]:
    return [SourceInstance(Path(f"/spool/{series}.{i}"), f"{series}.{i}", CT, study, series,
                           patient, "1.2.840.10008.1.2.1", size, "0" * 64)
            for i in range(n)]


def uids(volume):
    return [i.sop_instance_uid for i in volume]


def test_a_job_that_fits_is_one_volume():
    job = fake("P", "S1", "S1.1", 10, MB) + fake("P", "S2", "S2.1", 10, MB)
    assert plan_volumes(job, 700 * MB) == [job]


def test_studies_stay_together_and_media_fill_in_order():
    a = fake("P1", "A", "A.1", 30, MB)
    b = fake("P1", "B", "B.1", 30, MB)
    c = fake("P2", "C", "C.1", 10, MB)
    volumes = plan_volumes(a + b + c, 50 * MB)
    # B does not fit behind A: it starts disc 2, and C fits behind it.
    assert [uids(v) for v in volumes] == [uids(a), uids(b + c)]


def test_a_large_study_splits_at_series_then_instances():
    s1 = fake("P", "S", "S.1", 20, MB)
    s2 = fake("P", "S", "S.2", 20, MB)
    s3 = fake("P", "S", "S.3", 70, MB)       # larger than a medium on its own
    after = fake("P", "T", "T.1", 5, MB)
    volumes = plan_volumes(s1 + s2 + s3 + after, 50 * MB)
    flat = [u for v in volumes for u in uids(v)]
    assert flat == uids(s1 + s2 + s3 + after)             # each once, in order
    assert uids(volumes[0])[:40] == uids(s1 + s2)         # whole series first
    assert {i.series_instance_uid for i in volumes[0]} == {"S.1", "S.2", "S.3"}
    assert len(volumes) == 3
    for v in volumes:
        cost = OVERHEAD_BYTES + sum(i.size for i in v)
        assert cost <= 50 * MB
    with pytest.raises(MediaError) as err:
        plan_volumes(s1 + s3, 50 * MB, split_series=False)
    assert err.value.kind == "too-small" and "S.3" in str(err.value)


def test_a_study_that_needs_several_media_starts_on_a_fresh_one():
    a = fake("P1", "A", "A.1", 10, MB)
    b = fake("P2", "B", "B.1", 80, MB)
    c = fake("P3", "C", "C.1", 5, MB)
    volumes = plan_volumes(a + b + c, 50 * MB)
    assert uids(volumes[0]) == uids(a)            # no stray piece of B behind A
    assert {i.study_instance_uid for i in volumes[1]} == {"B"}
    assert uids(volumes[2]) == uids(b)[len(volumes[1]):] + uids(c)


def test_what_cannot_fit_is_a_clear_error():
    with pytest.raises(MediaError) as err:
        plan_volumes(fake("P", "S", "S.1", 1, 60 * MB), 50 * MB)
    assert err.value.kind == "too-small" and "60.0 MB" in str(err.value)
    with pytest.raises(MediaError) as err:
        plan_volumes(fake("P", "S", "S.1", 1, 10), OVERHEAD_BYTES)
    assert err.value.kind == "too-small"


def test_duplicates_and_size_estimates():
    job = fake("P", "S", "S.1", 10, MB)
    assert plan_volumes(job + job, 50 * MB) == [job]
    volumes = plan_volumes(job, 50 * MB, size_of=lambda i: 4 * MB)
    assert [len(v) for v in volumes] == [10]
    volumes = plan_volumes(job, 20 * MB, size_of=lambda i: 4 * MB)
    assert [len(v) for v in volumes] == [4, 4, 2]


@pytest.fixture
def loop_device(tmp_path):
    K.require("losetup", "truncate")
    made: list[str] = []

    def make(size: str) -> str:
        backing = tmp_path / f"loop{len(made)}.img"
        K.run("truncate", "-s", size, backing, check=True)
        r = K.run("losetup", "--find", "--show", backing)
        if r.returncode != 0:
            pytest.fail(f"losetup failed: {r.stderr.strip()}")
        made.append(r.stdout.strip())
        return r.stdout.strip()

    yield make
    for dev in made:
        K.run("losetup", "-d", dev)


def test_a_job_spans_small_discs_each_a_complete_fileset(tmp_path, loop_device):
    spool = tmp_path / "spool"
    files = (datagen.ct_series(spool / "a", 6, rows=512, cols=512, patient=K.JAPANESE,
                               charset="\\ISO 2022 IR 87", prefix="A")
             + datagen.ct_series(spool / "b", 3, rows=512, cols=512, prefix="B")
             + datagen.ct_series(spool / "c", 14, rows=512, cols=512, patient=K.LATIN1,
                                 charset="ISO_IR 100", prefix="C"))
    job = [K.source(p) for p in files]
    first = OpticalWriter(f"stdio:{loop_device('6M')}")
    info = first.probe()
    assert info.state is MediumState.BLANK
    volumes = plan_volumes(job, first.usable_bytes(info), block_bytes=first.block_bytes)
    assert len(volumes) >= 3
    assert sorted(u for v in volumes for u in uids(v)) == sorted(uids(job))
    for n, volume in enumerate(volumes, 1):
        fs = tmp_path / f"fs{n}"
        result = build_fileset(volume, fs, fileset_id=f"20260101-0001-{n}",
                               profile="STD-GEN-CD", label=K.label(n, len(volumes)))
        K.check_dicomdir(fs)
        by_uid = K.files_by_uid(fs)
        assert set(by_uid) == set(uids(volume))
        assert result.instances == len(volume)
        refs = set(by_uid.values())
        assert {str(dcmread(fs / r, stop_before_pixels=True).SOPInstanceUID)
                for r in refs} == set(uids(volume))
        text = f"Disc {n} of {len(volumes)}"
        assert text in (fs / "README.TXT").read_text("ascii")
        assert text in (fs / "INDEX.HTM").read_text("utf-8")
        iso = tmp_path / f"disc{n}.iso"
        size = build_iso(fs, iso, f"20260101_0001_{n}OF{len(volumes)}")
        writer = first if n == 1 else OpticalWriter(f"stdio:{loop_device('6M')}")
        assert size <= writer.usable_bytes(writer.probe())
        device = writer.device
        writer.write(iso)
        writer.verify(iso_path=iso)
        extracted = K.extract_iso(device, tmp_path / f"out{n}")
        assert extracted == {rel: sha for rel, sha, _ in result.files}
        K.check_dicomdir(tmp_path / f"out{n}")
