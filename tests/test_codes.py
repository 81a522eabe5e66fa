"""The index-grid file (docs/index-grid-format.md): round trips, and every way read_codes refuses a bad file.

Bad files are crafted with safetensors.torch.save_file directly, so each test breaks exactly one thing."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vqgen.checkpoint import FORMAT_VERSION, KIND_CODES, KIND_PRIOR, KIND_VQVAE
from vqgen.codes import CodeSet, code_dtype, read_codes, write_codes
from vqgen.errors import CodesError, VqgenError

N, H, W, K = 6, 4, 3, 16


def _good(labels: bool = True) -> tuple[dict, dict]:
    """Tensors and metadata of a valid index-grid file, built by hand (not through write_codes)."""
    g = torch.Generator().manual_seed(0)
    tensors = {"codes": torch.randint(0, K, (N, H, W), generator=g).to(torch.int16)}
    meta = {"format": KIND_CODES, "format_version": FORMAT_VERSION, "vqgen_version": "0.1.0", "num_codes": str(K),
            "height": str(H), "width": str(W), "class_names": "[]", "vqvae_sha256": "ab" * 32, "source": "test"}
    if labels:
        tensors["labels"] = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int64)
        meta["class_names"] = json.dumps(["a", "b", "c"])
    return tensors, meta


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


# -- round trips ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_codes,stored", [(16, torch.int16), (32768, torch.int16), (32769, torch.int32),
                                              (70000, torch.int32)])
@pytest.mark.parametrize("labelled", [False, True])
def test_round_trip(tmp_path, num_codes, stored, labelled):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, num_codes, (5, 2, 3), generator=g)
    codes[0, 0, 0], codes[-1, -1, -1] = 0, num_codes - 1  # both ends of the range survive
    labels = torch.tensor([0, 1, 1, 0, 1]) if labelled else None
    names = ["cat", "dog"] if labelled else []
    path = tmp_path / "c.safetensors"
    write_codes(path, CodeSet(codes, num_codes, labels, names, "f" * 64, "somewhere#train"))

    with safe_open(str(path), "pt") as f:  # on disk: the documented dtypes and metadata strings
        assert f.get_tensor("codes").dtype == stored == code_dtype(num_codes)
        meta = f.metadata()
        assert ("labels" in f.keys()) == labelled
    assert meta["format"] == KIND_CODES and meta["num_codes"] == str(num_codes)
    assert (meta["height"], meta["width"]) == ("2", "3")

    cs = read_codes(path)
    assert cs.codes.dtype == torch.int64 and torch.equal(cs.codes, codes)
    assert cs.num_codes == num_codes and (cs.height, cs.width, len(cs)) == (2, 3, 5)
    assert cs.class_names == names and cs.vqvae_sha256 == "f" * 64 and cs.source == "somewhere#train"
    if labelled:
        assert cs.labels.dtype == torch.int64 and torch.equal(cs.labels, labels)
    else:
        assert cs.labels is None
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_hand_made_good_file_reads(tmp_path):
    """The baseline every failure test below breaks in one place."""
    for labelled in (False, True):
        cs = read_codes(_write(tmp_path / f"g{labelled}.safetensors", *_good(labelled)))
        assert len(cs) == N and (cs.labels is not None) == labelled


def test_write_codes_refuses_bad_sets_and_writes_nothing(tmp_path):
    path = tmp_path / "c.safetensors"
    bad = [
        CodeSet(torch.full((2, 2, 2), 16), 16),  # out of range
        CodeSet(torch.full((2, 2, 2), -1), 16),  # negative
        CodeSet(torch.zeros(2, 2), 16),  # not (N, H, W)
        CodeSet(torch.zeros(0, 2, 2, dtype=torch.long), 16),  # empty
        CodeSet(torch.zeros(2, 2, 2), 16),  # floats
        CodeSet(torch.zeros(2, 2, 2, dtype=torch.long), 16, torch.tensor([0, 5]), ["a", "b"]),  # label range
    ]
    for cs in bad:
        with pytest.raises(CodesError):
            write_codes(path, cs)
    assert list(tmp_path.iterdir()) == []


# -- each validation failure of read_codes ---------------------------------------------------------------------
def _del(key):
    def f(t, m):
        del m[key]

    return f


def _set_meta(key, value):
    def f(t, m):
        m[key] = value

    return f


def _set_tensor(key, value):
    def f(t, m):
        t[key] = value(t) if callable(value) else value

    return f


def _codes_value(index, value):
    def f(t, m):
        t["codes"] = t["codes"].clone()
        t["codes"][index] = value

    return f


BROKEN = {
    # which kind of file
    "weights file as codes (vqvae)": (_set_meta("format", KIND_VQVAE), "VQ-VAE weights file"),
    "weights file as codes (prior)": (_set_meta("format", KIND_PRIOR), "prior weights file"),
    "unknown format": (_set_meta("format", "someone.else"), "'someone.else'"),
    "no format at all": (_del("format"), "not a vqgen file"),
    "wrong version": (_set_meta("format_version", "99"), "format_version '99'"),
    "missing version": (_del("format_version"), "format_version None"),
    # metadata fields
    **{f"missing {k}": (_del(k), repr(k)) for k in
       ("num_codes", "height", "width", "class_names", "vqvae_sha256", "source", "vqgen_version")},
    "num_codes not a number": (_set_meta("num_codes", "many"), "malformed"),
    "height not a number": (_set_meta("height", "4.5"), "malformed"),
    "num_codes zero": (_set_meta("num_codes", "0"), "metadata num_codes is 0, outside the 2 to 1,048,576 codes"),
    "num_codes 2^31 - 1": (_set_meta("num_codes", str(2**31 - 1)), "metadata num_codes is 2147483647, outside"),
    "class_names not JSON": (_set_meta("class_names", "[cat, dog"), "malformed"),
    "class_names not a list": (_set_meta("class_names", '"cat"'), "malformed"),
    "class_names not strings": (_set_meta("class_names", "[1, 2, 3]"), "malformed"),
    "class_names an object": (_set_meta("class_names", '{"a": 1}'), "malformed"),
    # the codes tensor
    "no codes tensor": (lambda t, m: t.update(grids=t.pop("codes")), "no 'codes' tensor"),
    "codes int32 for K<=32768": (_set_tensor("codes", lambda t: t["codes"].int()), "dtype torch.int32"),
    "codes int64": (_set_tensor("codes", lambda t: t["codes"].long()), "dtype torch.int64"),
    "codes float": (_set_tensor("codes", lambda t: t["codes"].float()), "dtype torch.float32"),
    "codes uint8": (_set_tensor("codes", lambda t: t["codes"].to(torch.uint8)), "dtype torch.uint8"),
    "int16 codes but K needs int32": (_set_meta("num_codes", "40000"), "expected torch.int32"),
    "shape differs from metadata": (_set_meta("height", "8"), "metadata says (N, 8, 3)"),
    "grid transposed": (_set_tensor("codes", lambda t: t["codes"].transpose(1, 2).contiguous()), "shape (6, 3, 4)"),
    "codes 2-d": (_set_tensor("codes", lambda t: t["codes"][:, 0].contiguous()), "shape (6, 3)"),
    "no grids": (_set_tensor("codes", lambda t: t["codes"][:0].contiguous()), "non-empty"),
    "empty grid cells": (lambda t, m: (t.update(codes=torch.zeros(N, 0, 0, dtype=torch.int16)),
                                      m.update(height="0", width="0")), "non-empty"),
    "code out of range": (_codes_value((2, 1, 1), K), f"outside [0, {K})"),
    "code far out of range": (_codes_value((0, 0, 0), 30000), f"outside [0, {K})"),
    "negative code": (_codes_value((5, 3, 2), -1), f"outside [0, {K})"),
    # labels
    "labels int32": (_set_tensor("labels", lambda t: t["labels"].int()), "labels must be int64"),
    "labels float": (_set_tensor("labels", lambda t: t["labels"].float()), "labels must be int64"),
    "labels 2-d": (_set_tensor("labels", lambda t: t["labels"][:, None].contiguous()), "labels must be int64"),
    "labels too few": (_set_tensor("labels", lambda t: t["labels"][:-1].contiguous()), "labels must be int64"),
    "labels too many": (_set_tensor("labels", lambda t: torch.cat([t["labels"], t["labels"]])),
                        "labels must be int64"),
    "label beyond class names": (_set_tensor("labels", torch.tensor([0, 1, 3, 0, 1, 2])), "outside the 3 class"),
    "negative label": (_set_tensor("labels", torch.tensor([0, 1, 2, -1, 1, 2])), "labels"),
    "negative label, no class names": (lambda t, m: (t.update(labels=torch.tensor([0, 1, 2, -1, 1, 2])),
                                                     m.update(class_names="[]")), "labels"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_read_codes_refuses(tmp_path, case):
    breaker, phrase = BROKEN[case]
    tensors, meta = _good(labels=True)
    breaker(tensors, meta)
    path = _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CodesError) as e:
        read_codes(path)
    msg = str(e.value)
    assert phrase in msg, msg
    assert str(path) in msg and "\n" not in msg  # one line, naming the file


NOT_SAFETENSORS = {
    "empty": (b"", "empty"),
    "random bytes": (bytes(range(7, 256)) * 40, "not a valid safetensors file"),
    "png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "not a valid safetensors file"),
    "json header lies about length": (b"\x10\0\0\0\0\0\0\0" + b'{"a": 1}' + b" " * 8, "not a valid safetensors"),
    "header is a JSON list": (b"\x08\0\0\0\0\0\0\0" + b"[1, 2]  ", "not a valid safetensors"),
    "metadata is not a dict": (b"\x18\0\0\0\0\0\0\0" + b'{"__metadata__": [1, 2]}', "metadata"),
    "metadata value not a string": (b"\x20\0\0\0\0\0\0\0" + b'{"__metadata__": {"format": 3}} ', "metadata"),
}


@pytest.mark.parametrize("case", sorted(NOT_SAFETENSORS))
def test_read_codes_refuses_non_safetensors(tmp_path, case):
    data, phrase = NOT_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CodesError, match=phrase):
        read_codes(path)


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_valid_file_whose_header_length_looks_like_a_pickle_is_read(tmp_path, first_bytes):
    """A header of 384 bytes starts the file with 0x80, one of 19280 bytes with "PK" (the pickle / zip magic)."""
    tensors, meta = _good()
    path = tmp_path / "c.safetensors"
    for pad in range(0, 20000, 1 if first_bytes == b"\x80" else 8):
        meta["source"] = "x" * (pad if first_bytes == b"\x80" else 18600 + pad)
        _write(path, tensors, meta)
        if path.read_bytes().startswith(first_bytes):
            break
    else:
        pytest.fail("could not craft the header length")
    assert read_codes(path).source == meta["source"]


def test_read_codes_refuses_truncated_file(tmp_path):
    good = _write(tmp_path / "good.safetensors", *_good())
    raw = good.read_bytes()
    for cut in (4, 20, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CodesError, match="truncated|not a valid"):
            read_codes(bad)


class _Boobytrap:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_read_codes_never_unpickles(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "codes.safetensors"
    path.write_bytes(pickle.dumps(_Boobytrap(target), protocol=protocol))
    assert not target.exists()
    with pytest.raises(VqgenError):
        read_codes(path)
    assert not target.exists()


def test_read_codes_missing_and_folder(tmp_path):
    with pytest.raises(CodesError, match="no such file"):
        read_codes(tmp_path / "nope.safetensors")
    with pytest.raises(CodesError, match="is a folder"):
        read_codes(tmp_path)
