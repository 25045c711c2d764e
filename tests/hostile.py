"""Builders of hostile and broken files, shared by the safety tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def lambda_model(marker: Path):
    """A tiny model whose Lambda layer writes ``marker`` whenever its code runs."""
    from core.intake.tf_env import keras

    k = keras()
    code = f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('code ran'), t)[1]"
    inputs = k.Input((8, 8, 3))
    x = k.layers.Lambda(eval(code), name="innocent_resize")(inputs)  # noqa: S307 (test fixture)
    x = k.layers.Conv2D(2, 3)(x)
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(2, activation="softmax")(x)
    return k.Model(inputs, outputs)


def tiny_model(conv: bool = True):
    from core.intake.tf_env import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(2, 3, name="c")(inputs) if conv else inputs
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(3, activation="softmax")(x)
    return k.Model(inputs, outputs)


def rewrite_keras_config(src: Path, dst: Path, edit) -> None:
    """Copy a .keras archive with its config.json passed through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(item, data)


# ------------------------------------------------------- bombs from small generators


def repeated_deflate(chunk: bytes, times: int, zlib_wrapper: bool = False) -> tuple[bytes, int, int]:
    """A deflate stream of ``chunk`` repeated ``times`` times, built without inflating it.

    After a full flush the compressor forgets its history, so every repeat
    compresses to the same bytes and the stream is just that block repeated:
    a multi-GB member costs a few MB and a second to build. Returns
    (compressed, crc32 of the whole, inflated size). The CRC is computed over
    the whole data so the archive is valid, not merely plausible.
    """
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 15 if zlib_wrapper else -15)
    head = compressor.compress(b"") + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    if zlib_wrapper:
        adler = _repeat_checksum(zlib.adler32(chunk), len(chunk), times, _adler_concat, initial=1)
        tail = tail[:-4] + adler.to_bytes(4, "big")
    crc = _repeat_checksum(zlib.crc32(chunk), len(chunk), times, _crc_concat, initial=0)
    return head + block * times + tail, crc, len(chunk) * times


def _repeat_checksum(single: int, length: int, times: int, concat, initial: int) -> int:
    """Checksum of a block repeated ``times`` times, by doubling (O(log times) combines)."""
    result, result_len, base, base_len = initial, 0, single, length
    while times:
        if times & 1:
            result = base if result_len == 0 else concat(result, base, base_len)
            result_len += base_len
        base = concat(base, base, base_len)
        base_len *= 2
        times >>= 1
    return result


def _adler_concat(adler_a: int, adler_b: int, len_b: int) -> int:
    """adler32(a + b) from the parts (zlib's adler32_combine, in Python)."""
    base = 65521
    rem = len_b % base
    sum1 = adler_a & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 += (adler_b & 0xFFFF) + base - 1
    sum2 += (adler_a >> 16) + (adler_b >> 16) + base - rem
    sum1 %= base
    sum2 %= base
    return sum1 | (sum2 << 16)


def ratio_chunk(ratio: int, size: int = 1 << 20, seed: int = 0) -> bytes:
    """``size`` bytes that deflate about ``ratio``:1 (random head, zero tail)."""
    import numpy as np

    noise_bytes = max(int(size * (1 / ratio - 1 / 1000)), 16)  # deflate packs zeros about 1000:1
    noise = np.random.default_rng(seed).integers(0, 256, noise_bytes, dtype=np.uint8).tobytes()
    return noise + bytes(size - len(noise))


def write_raw_zip(path: Path, members: list[dict]) -> None:
    """Write a zip by hand so a test can make its directory lie.

    Each member: name, data (already compressed), crc, size (inflated),
    method (0 stored, 8 deflate), and optional overrides central_size /
    flags that go into the headers as given.
    """
    import struct

    out = bytearray()
    central = bytearray()
    for m in members:
        name = m["name"].encode()
        data, crc, size, method = m["data"], m["crc"], m["size"], m.get("method", 8)
        flags = m.get("flags", 0)
        zip64 = size >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF or len(out) >= 0xFFFFFFFF
        declared = m.get("central_size", size)
        offset = len(out)
        extra = struct.pack("<HHQQ", 1, 16, declared, len(data)) if zip64 else b""
        out += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 45 if zip64 else 20, flags, method, 0, 0x21, crc,
            0xFFFFFFFF if zip64 else len(data), 0xFFFFFFFF if zip64 else declared, len(name), len(extra),
        ) + name + extra
        out += data
        cextra = struct.pack("<HHQQQ", 1, 24, declared, len(data), offset) if zip64 else b""
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45 if zip64 else 20, 45 if zip64 else 20, flags, method, 0, 0x21,
            crc, 0xFFFFFFFF if zip64 else len(data), 0xFFFFFFFF if zip64 else declared, len(name), len(cextra), 0, 0, 0, 0,
            0xFFFFFFFF if zip64 else offset,
        ) + name + cextra
    start = len(out)
    out += central
    end64 = len(out)
    out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, len(members), len(members), len(central), start)
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, end64, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), min(start, 0xFFFFFFFF), 0)
    Path(path).write_bytes(bytes(out))


def zip_member(name: str, data: bytes, method: int = 8, **overrides) -> dict:
    """A member for :func:`write_raw_zip` from plain bytes."""
    import zlib

    compressed = data
    if method == 8:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        compressed = c.compress(data) + c.flush()
    return {"name": name, "data": compressed, "crc": zlib.crc32(data), "size": len(data), "method": method, **overrides}


def keras_members(keras_file: Path) -> list[dict]:
    """The members of a real .keras file, re-packed for :func:`write_raw_zip`."""
    with zipfile.ZipFile(keras_file) as archive:
        return [zip_member(info.filename, archive.read(info)) for info in archive.infolist()]


def npy_header(shape: tuple, dtype: str = "<f4") -> bytes:
    """A version 1.0 .npy header declaring ``shape`` (the data may say otherwise)."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (dtype, tuple(shape))
    pad = 64 - (10 + len(text) + 1) % 64
    text += " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def bomb_npy_member(name: str, shape: tuple, dtype: str, ratio: int) -> dict:
    """An .npy member whose data really is what its header declares, deflated ~``ratio``:1."""
    import zlib

    import numpy as np

    header = npy_header(shape, dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    chunk = ratio_chunk(ratio)
    assert nbytes % len(chunk) == 0, "choose a shape whose size is a whole number of MiB"
    body, body_crc, _ = repeated_deflate(chunk, nbytes // len(chunk))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    # The header's stream ends with a full flush (byte-aligned, not final), so
    # the body's blocks can follow it directly.
    crc = _crc_concat(zlib.crc32(header), body_crc, nbytes)
    return {"name": name, "data": head + body, "crc": crc, "size": len(header) + nbytes, "method": 8}


def _crc_concat(crc_a: int, crc_b: int, len_b: int) -> int:
    """crc32(a + b) from crc32(a), crc32(b) and len(b) (zlib's crc32_combine, in Python)."""

    def gf2_times(mat, vec):
        total, i = 0, 0
        while vec:
            if vec & 1:
                total ^= mat[i]
            vec >>= 1
            i += 1
        return total

    def gf2_square(mat):
        return [gf2_times(mat, mat[n]) for n in range(32)]

    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = gf2_square(odd)
    odd = gf2_square(even)
    while True:
        even = gf2_square(odd)
        if len_b & 1:
            crc_a = gf2_times(even, crc_a)
        len_b >>= 1
        if not len_b:
            break
        odd = gf2_square(even)
        if len_b & 1:
            crc_a = gf2_times(odd, crc_a)
        len_b >>= 1
        if not len_b:
            break
    return crc_a ^ crc_b


def png_bytes(width: int, height: int, color_type: int, bit_depth: int, rows: list[bytes], palette: bytes | None = None) -> bytes:
    """A PNG written by hand (OpenCV cannot write palette images)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + row for row in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette is not None:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ------------------------------------------------------------ measuring a refusal

_REFUSAL_SCRIPT = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[3])
started = time.perf_counter()
from core.errors import TrojanScopeError
kind, path = sys.argv[1], sys.argv[2]
skipped = []
try:
    if kind == "model":
        from core.intake.models import load_model
        load_model(path)
    else:
        from core.intake.data import open_data
        source = open_data(path)
        for batch in source.batches((8, 8, 3)):
            skipped.extend(s.as_dict() for s in batch.skipped)
    code, message = 0, ""
except TrojanScopeError as exc:
    code, message = 2, str(exc)
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(json.dumps({
    "code": code, "message": message, "skipped": skipped,
    "seconds": time.perf_counter() - started,
    # VmHWM starts afresh at exec; ru_maxrss would keep the forking parent's (pytest's) peak.
    "peak_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024,
    "child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "written_mb": int(io["wchar"]) / 2**20,
}))
"""


def measure_refusal(kind: str, path: Path, tmp: Path, timeout: float = 120, env: dict | None = None) -> dict:
    """Open ``path`` in a fresh Python process; its outcome, time, peak memory and bytes written.

    The process gets its own empty TMPDIR, whose size afterwards is reported
    too, so a refusal that leaves files behind is caught.
    """
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    tmpdir = tmp / "process-tmp"
    tmpdir.mkdir(exist_ok=True)
    environment = {**os.environ, "TMPDIR": str(tmpdir), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", _REFUSAL_SCRIPT, kind, str(path), str(root)],
        capture_output=True, text=True, timeout=timeout, env=environment,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tmp_left_mb"] = sum(f.stat().st_size for f in tmpdir.rglob("*") if f.is_file()) / 2**20
    log = os.environ.get("TROJANSCOPE_HOSTILE_LOG")  # the numbers for a report: one JSON line per refusal
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"file": Path(path).name, "file_mb": _size_mb(Path(path)), **result}) + "\n")
    return result


def _size_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 2**20 if path.is_file() else 0.0
    except OSError:
        return 0.0


def allocate_forever() -> None:
    """A stand-in for a bomb that slips past every check (run in the isolated child)."""
    hoard = []
    while True:
        hoard.append(bytearray(64 << 20))


def spin_forever() -> None:
    while True:
        pass
