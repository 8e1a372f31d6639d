"""Streaming VCF/BCF reader for ingest: validated records packed as `org.gdx.VariantRecord` dicts and
the FileManifest START, VariantBatch..., FileManifest END event sequence of one file.

Plain, gzip and bgzip VCF text is decompressed and parsed here (htslib cannot read plain gzip
without seeking, and a text parser knows line numbers); BCF goes through pysam and each record's
VCF text through the same parser. Which malformed input is rejected and which is ingested:
services/ingest/BAD_INPUT.md.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pysam
from gdx.common.envelope import stable_id
from gdx.common.errors import PermanentError

MANIFEST = "org.gdx.FileManifest"
BATCH = "org.gdx.VariantBatch"

MISSING_INT = -2147483648  # int32 "missing" in dp, gq and ad, as in BCF
GT_MISSING = -1
GT_UNUSED = -2

# The 28-byte empty block every BGZF writer (htslib, biopython) ends a file with: without it the
# file was cut at a block boundary, which decompresses cleanly but is incomplete.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_CHUNK = 1 << 20
_MAX_LINE = 256 << 20  # a line longer than this is not VCF text: refuse instead of filling memory
_FIXED = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
_FILEFORMAT = re.compile(r"VCFv4\.[0-5]")
_GRCH37_CHR1, _GRCH38_CHR1 = 249250621, 248956422


class VcfError(PermanentError):
    """The file cannot be ingested. The message names the file, the line (VCF) or record (BCF), and why.

    Raised before the START manifest for header problems, or after some batches were yielded;
    `failed_manifest` is then the FAILED manifest to send (None when the file could not be read at
    all), and `record_count`/`batch_count` say how much was already yielded.
    """

    reason_code = "invalid-vcf"

    def __init__(self, file_name: str, reason: str, *, line: int | None = None, record: int | None = None,
                 reason_code: str | None = None):
        where = f" line {line}" if line else f" record {record}" if record else ""
        super().__init__(f"{file_name}{where}: {reason}", reason_code=reason_code)
        self.file_name = file_name
        self.line = line
        self.record = record
        self.batch_count = 0
        self.failed_manifest: dict[str, Any] | None = None


class _Bad(Exception):
    """A record is invalid; the reader adds file name and line/record number."""

    at = 0  # which of the records given to _RecordParser.fill_samples


# The one definition of ingest's variant event ids (the producer, the drop box and tests use these).
# A batch is named by the file's checksum (file_id = sha256) and the range of records it carries, so
# the same file sent twice gives the same ids and downstream de-duplicates it.


def batch_event_id(file_id: str, first_record: int, record_count: int) -> str:
    """Event id of the batch carrying records [first_record, first_record + record_count) of a file."""
    return stable_id("org.gdx.VariantBatch", file_id, first_record, record_count)


def manifest_event_id(file_id: str, phase: str) -> str:
    """Event id of a file's START, END or FAILED manifest."""
    return stable_id("org.gdx.FileManifest", file_id, phase)


def event_id(name: str, value: dict[str, Any]) -> str:
    """Event id of any event `iter_events` yields (and of the FAILED manifest)."""
    if name == BATCH:
        return batch_event_id(value["file_id"], value["first_record"], value["record_count"])
    return manifest_event_id(value["file_id"], value["phase"])


# ---------------------------------------------------------------------------------------------
# Reading bytes


@dataclass(frozen=True)
class _FileFacts:
    size: int
    sha256: str
    md5: str
    tail: bytes  # the last 28 bytes, to check the BGZF end-of-file marker


def _file_facts(path: Path) -> _FileFacts:
    # One pass over the bytes before parsing: file_id goes into the START manifest, which comes first.
    sha, md5, size, tail = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0, b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            tail = (tail + chunk)[-28:]
    return _FileFacts(size, sha.hexdigest(), md5.hexdigest(), tail)


class _TextLines:
    """Lines (without the newline) of plain, gzip or bgzip text, decompressed in 1 MiB steps.

    Tracks compressed bytes consumed for progress. Python's zlib, not htslib: plain gzip streams
    without seeking, and truncation (an unfinished gzip member, no final newline) is detected here.
    """

    def __init__(self, path: Path, compression: str, name: str):
        self.path, self.compression, self.name = path, compression, name
        self.bytes_read = 0
        self.lines_read = 0
        self._gen = self._lines()

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def __next__(self) -> bytes:
        return next(self._gen)

    def _chunks(self) -> Iterator[bytes]:
        with self.path.open("rb") as raw:
            if self.compression == "none":
                while data := raw.read(_CHUNK):
                    self.bytes_read += len(data)
                    yield data
                return
            inflater = zlib.decompressobj(31)
            started = False
            while data := raw.read(_CHUNK):
                self.bytes_read += len(data)
                out = []
                while data:
                    try:
                        out.append(inflater.decompress(data))
                    except zlib.error as exc:
                        raise VcfError(self.name, f"corrupt {self.compression} data near byte "
                                       f"{self.bytes_read}: {exc}", reason_code="corrupt-file") from None
                    started = True
                    if inflater.eof:  # one gzip member ended (each BGZF block is one); the next may follow
                        data = inflater.unused_data
                        inflater = zlib.decompressobj(31)
                        started = False
                    else:
                        data = b""
                yield b"".join(out)
            if started:
                raise VcfError(self.name, f"truncated {self.compression} file: the compressed stream ends "
                               "part-way through", reason_code="truncated")

    def _lines(self) -> Iterator[bytes]:
        rest = b""
        for chunk in self._chunks():
            lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
            rest = lines.pop()
            if len(rest) > _MAX_LINE:
                raise VcfError(self.name, f"a line longer than {_MAX_LINE >> 20} MiB: not VCF text",
                               line=self.lines_read + len(lines) + 1)
            for line in lines:
                self.lines_read += 1
                yield line
        if rest:
            if self.compression == "none":
                # Uncompressed text has no end marker: a missing final newline is the one sign of a
                # cut transfer. A compressed stream that ended cleanly passed its CRC and length check.
                raise VcfError(self.name, "the last line does not end with a newline: the file may be "
                               "truncated (append a newline, or send it bgzipped)",
                               line=self.lines_read + 1, reason_code="truncated")
            self.lines_read += 1
            yield rest


# ---------------------------------------------------------------------------------------------
# Header


def _structured(value: str) -> dict[str, str] | None:
    """The key=value pairs of a structured meta line's <...>, or None when it is malformed."""
    if not (value.startswith("<") and value.endswith(">")):
        return None
    body, out, i = value[1:-1], {}, 0
    while i < len(body):
        eq = body.find("=", i)
        if eq < 0:
            return None
        key = body[i:eq]
        if not key or "," in key or " " in key:
            return None
        if body[eq + 1: eq + 2] == '"':
            j, text = eq + 2, []
            while j < len(body) and body[j] != '"':
                if body[j] == "\\" and j + 1 < len(body):
                    j += 1
                text.append(body[j])
                j += 1
            if j >= len(body):
                return None
            out[key] = "".join(text)
            i = j + 1
        else:
            j = body.find(",", eq + 1)
            j = len(body) if j < 0 else j
            out[key] = body[eq + 1: j]
            i = j
        if i < len(body):
            if body[i] != ",":
                return None
            i += 1
    return out


def _valid_contig(name: str) -> bool:
    # VCF 4.3 section 1.4.7, plus the <name> form the conformance suite accepts. ':' and '*' stay
    # allowed: GRCh38 analysis sets name HLA contigs like HLA-A*01:01:01:01.
    if name.startswith("<") and name.endswith(">") and len(name) > 2:
        name = name[1:-1]
    return bool(_CONTIG_NAME.fullmatch(name))


_CONTIG_NAME = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")

_ASSEMBLY_TEXT = [
    ("GRCh38", re.compile(r"GRCh38|hg38|hs38|GCA_000001405\.(1[5-9]|2\d)|GCF_000001405\.(2[6-9]|[34]\d)", re.I)),
    ("GRCh37", re.compile(r"GRCh37|hg19|hs37|b37|g1k_v37|GCA_000001405\.1\b|GCF_000001405\.(1[3-9]|2[0-5])", re.I)),
    ("NCBI36", re.compile(r"NCBI36|hg18|b36", re.I)),
]


def guess_assembly(header: list[str], contig_lengths: dict[str, int | None]) -> str:
    """GRCh37, GRCh38, NCBI36 or 'unknown', from chr1's declared length, else contig assembly= tags,
    else ##reference/##assembly text. Lengths first: they are facts about the sequence, text is a label.
    """
    for chrom in ("1", "chr1"):
        length = contig_lengths.get(chrom)
        if length == _GRCH37_CHR1:
            return "GRCh37"
        if length == _GRCH38_CHR1:
            return "GRCh38"
    texts = [m.group(1) for line in header if line.startswith("##contig=")
             for m in [re.search(r"[<,]assembly=\"?([^,>\"]+)", line)] if m]
    texts += [line.split("=", 1)[1] for line in header if line.startswith(("##reference=", "##assembly="))]
    for text in texts:
        for assembly, pattern in _ASSEMBLY_TEXT:
            if pattern.search(text):
                return assembly
    return "unknown"


# ---------------------------------------------------------------------------------------------
# Records

# Byte tables for the packed-genotype fast path: '0'-'9' -> 0-9, '.' -> 0xFF (-1 as a signed byte).
_ALLELE = bytearray(256)
for _d in range(10):
    _ALLELE[48 + _d] = _d
_ALLELE[ord(".")] = 0xFF
_ALLELE_TABLE = bytes(_ALLELE)
_ALLELE_CHARS = [b"." + bytes(range(48, 49 + n)) for n in range(10)]  # '.', '0' .. str(n)
_PHASE = bytearray(256)
_PHASE[ord("|")] = 1
_PHASE_TABLE = bytes(_PHASE)
_NOT_FIELD_SEP = bytes(b for b in range(256) if b not in b":\t")
_MISSING_PACKED = MISSING_INT.to_bytes(4, "little", signed=True)
_BASES = b"ACGTNacgtn"
_FORMAT_KEY = re.compile(rb"[A-Za-z_][0-9A-Za-z_.]*")
_GT_SPLIT = re.compile(rb"([/|])")
_SYMBOLIC = re.compile(r"<[^<>\s,]+>")
_BREAKEND = re.compile(r"[ACGTNacgtn]+[\[\]][^\[\]\s,]+[\[\]]|[\[\]][^\[\]\s,]+[\[\]][ACGTNacgtn]+"
                       r"|\.[ACGTNacgtn]+|[ACGTNacgtn]+\.")
_BASES_RE = re.compile("[ACGTNacgtn]+")
_TYPED_INFO = {"AC", "AN", "AF", "DP", "END", "SVTYPE", "SVLEN"}
# The integer fast path over many records' sample columns (_RecordParser._numeric).
_SEPS = b":\t,/|"
_NUMERIC = b"0123456789." + _SEPS
_NOT_SEPS = bytes(b for b in range(256) if b not in _SEPS)
_TO_COMMA = bytes.maketrans(_SEPS, b"," * len(_SEPS))
_BLOCK_SAMPLES = 20_000  # sample columns parsed together: numpy's per-call cost spread thin, a few MB of arrays


def _packed(values: np.ndarray) -> bytes:
    """int32 LE of FORMAT integers, -1 (a '.') as MISSING_INT."""
    return np.where(values < 0, MISSING_INT, values).astype("<i4").tobytes()


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@dataclass(frozen=True)
class _Format:
    keys: int
    gt: bool
    dp: int | None
    gq: int | None
    ad: int | None


def _sample(index: int) -> str:
    # Errors end up in dead letters, which must not carry participant ids: name the column instead.
    return f"sample #{index + 1} (column {index + 10})"


def _is_uint(text: str) -> bool:
    # At most 18 digits: every value fits Avro's long.
    return text.isascii() and text.isdigit() and len(text) <= 18


class _RecordParser:
    """Turns one VCF data line (bytes, no newline) into a VariantRecord dict, validating what gdx uses."""

    def __init__(self, samples: list[str], has_format: bool):
        self.samples = samples
        self.n = len(samples)
        self.columns = 9 + self.n if has_format else 8
        self.formats: dict[bytes, _Format] = {}
        self.gt_cache: dict[bytes, tuple[bytes, int, int, int]] = {}
        self.skeletons: dict[tuple[int, bytes], bytes] = {}
        self.contig_raw = b""
        self.contig = ""
        self.zero_phase = bytes(self.n)
        self.packed: dict[bytes, bytes] = {b".": _MISSING_PACKED, b"": _MISSING_PACKED}
        self.ad_cache: dict[int, dict[bytes, bytes]] = {}
        self.info_items: dict[int, dict[str, tuple[str, str | None, Any]]] = {}

    # -- fixed columns ---------------------------------------------------------------------

    def parse(self, line: bytes) -> dict[str, Any]:
        record, fmt, tail = self.fixed(line)
        if tail is not None:
            self._samples(record, fmt, tail, len(record["alts"]))
        return record

    def fixed(self, line: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
        """The record of the fixed columns, its FORMAT and its sample columns (None: the file has none,
        and the record is complete). The FORMAT is checked; the samples are left to `fill_samples`."""
        cols = line.split(b"\t", 9)
        if len(cols) != (8 if self.columns == 8 else 10):
            raise _Bad(self._column_count(line))
        chrom, pos, vid, ref, alt, qual, filt, info = cols[:8]
        if chrom != self.contig_raw:
            name = chrom.decode("utf-8")
            if not _valid_contig(name):
                raise _Bad(f"CHROM {name!r} is not a valid contig name")
            self.contig_raw, self.contig = chrom, name
        if not pos.isdigit() or len(pos) > 18:
            raise _Bad(f"POS {pos.decode('utf-8', 'replace')!r} is not a position (a non-negative integer)")
        if not ref or ref.translate(None, _BASES):
            raise _Bad(f"REF {ref.decode('utf-8', 'replace')!r} is not a sequence of A, C, G, T, N")
        alts = self._alts(alt)
        if qual == b".":
            q = None
        else:
            try:
                q = float(qual)
            except ValueError:
                raise _Bad(f"QUAL {qual.decode('utf-8', 'replace')!r} is not a number") from None
            if q < 0:
                raise _Bad(f"QUAL {q:g} is negative")
        record: dict[str, Any] = {
            "contig": self.contig,
            "pos": int(pos),
            "ids": [] if vid == b"." else [i for i in vid.decode("utf-8").split(";") if i],
            "ref": ref.decode("ascii"),
            "alts": alts,
            "qual": q,
            "filters": [] if filt == b"." else [f for f in filt.decode("utf-8").split(";") if f and f != "."],
            "info": self._info(info, len(alts)),
        }
        if self.columns == 8:
            record.update(ploidy=0, gt=b"", phased=b"", dp=None, gq=None, ad=None)
            return record, b"", None
        tail = cols[9]
        if tail.count(b"\t") != self.n - 1:
            raise _Bad(self._column_count(line))
        fmt = cols[8]
        if fmt != b".":
            self._format(fmt)
        return record, fmt, tail

    def fill_samples(self, entries: list[tuple[dict[str, Any], bytes, bytes]]) -> None:
        """Fill in the sample fields of (record, FORMAT, sample columns) from `fixed`, in order.

        Runs of records with one integer-only FORMAT (GT:AD:DP:GQ...) are parsed together in C
        (`_numeric`); what that fast path does not take (GT-only columns, other ploidies, phase
        prefixes, decimals, dropped fields, bad values) goes through the per-record parser, which
        names the problem. A _Bad carries `at`, the
        index of the entry it is about: the entries before it are complete.
        """
        i = 0
        while i < len(entries):
            fmt = entries[i][1]
            j = i + 1
            if fmt != b"." and self.formats[fmt].keys > 1:
                while j < len(entries) and entries[j][1] == fmt:
                    j += 1
                self._run(entries, i, j)
            else:
                self._one(entries, i)
            i = j

    def _run(self, entries: list[tuple[dict[str, Any], bytes, bytes]], start: int, stop: int) -> None:
        # On a miss, halves: one odd record costs log2(run) retries, not the whole run the slow way.
        if self._numeric(entries[start:stop]):
            return
        if stop - start == 1:
            self._one(entries, start)
            return
        mid = (start + stop) // 2
        self._run(entries, start, mid)
        self._run(entries, mid, stop)

    def _one(self, entries: list[tuple[dict[str, Any], bytes, bytes]], index: int) -> None:
        record, fmt, tail = entries[index]
        try:
            self._samples(record, fmt, tail, len(record["alts"]))
        except _Bad as exc:
            exc.at = index
            raise
        except UnicodeDecodeError:
            bad = _Bad("not UTF-8 text")
            bad.at = index
            raise bad from None

    def _numeric(self, entries: list[tuple[dict[str, Any], bytes, bytes]]) -> bool:
        """Sample fields of records sharing one FORMAT, every value an integer or '.', every call
        haploid or diploid, no field dropped: parsed by numpy over the records' joined sample columns.
        False (nothing filled in) for anything else, which the per-record parser then handles.
        """
        spec = self.formats[entries[0][1]]
        n, k = self.n, spec.keys
        total = n * len(entries)
        text = b"\t".join([e[2] for e in entries]) if len(entries) > 1 else entries[0][2]
        if text.translate(None, _NUMERIC):
            return False
        try:
            # '.' becomes -1, which no digit text parses to: any other negative is a '.' inside a number
            values = np.fromstring(text.translate(_TO_COMMA).replace(b".", b"-1"), dtype=np.int64, sep=",")
        except ValueError:  # an empty value, or '.' next to a digit ("1.5")
            return False
        if not len(values) or values.min() < -1 or values.max() > 2147483647:
            return False
        seps = np.frombuffer(text.translate(None, _NOT_SEPS), np.uint8)  # seps[t] ends value t
        if len(seps) + 1 != len(values):
            return False
        ends = np.flatnonzero((seps == 58) | (seps == 9))  # ':' and tab end a field
        # k fields per sample, and samples end exactly at the tabs: no sample has more or fewer fields
        if len(ends) != total * k - 1 or not (seps[ends[k - 1::k]] == 9).all():
            return False
        first = np.empty(total * k, np.intp)  # index in `values` of each field's first value
        first[0] = 0
        np.add(ends, 1, out=first[1:])
        counts = np.empty(total * k, np.intp)  # values in each field
        np.subtract(first[1:], first[:-1], out=counts[:-1])
        counts[-1] = len(values) - first[-1]
        count = counts.reshape(total, k)
        alts = np.array([len(e[0]["alts"]) for e in entries], np.int64)
        out: dict[str, list[Any]] = {}
        if spec.gt:
            # haploid "a" or diploid "a/b", "a|b" (the only places a '/' or '|' may be)
            g, ploidy = first[0::k], count[:, 0]
            diploid = ploidy == 2
            slashes = np.count_nonzero(seps == 47) + np.count_nonzero(seps == 124)
            if not ((ploidy == 1) | diploid).all() or np.count_nonzero(diploid) != slashes \
                    or (seps[g[diploid]] == 44).any():
                return False
            top = np.repeat(np.minimum(alts, 127), n)
            a, b = values[g], np.where(diploid, values[g + 1], GT_UNUSED)  # a haploid call pads with -2
            if (a > top).any() or (b > top).any():
                return False
            gt = np.empty(2 * total, np.int8)
            gt[0::2], gt[1::2] = a, b
            # each record is as wide as its widest call: haploid records keep one byte a sample
            ploidies = diploid.reshape(len(entries), n).any(axis=1).tolist()
            pairs, singles = gt.tobytes(), gt[0::2].tobytes()
            out["ploidy"] = [2 if p else 1 for p in ploidies]
            out["gt"] = [pairs[2 * n * r: 2 * n * (r + 1)] if p else singles[n * r: n * (r + 1)]
                         for r, p in enumerate(ploidies)]
            # pysam reports a haploid call as phased; so do we
            out["phased"] = _cut(((seps[g] == 124) | ~diploid).view(np.uint8).tobytes(), n)
        elif (seps == 47).any() or (seps == 124).any():
            return False
        for key, index in (("dp", spec.dp), ("gq", spec.gq)):
            if index is None:
                continue
            if not (count[:, index] == 1).all():
                return False
            out[key] = _cut(_packed(values[first[index::k]]), 4 * n)
        if spec.ad is not None:
            starts, given = first[spec.ad::k], count[:, spec.ad]
            alleles = np.repeat(alts + 1, n)
            full = given == alleles
            if not full.all() and not (full | ((given == 1) & (values[starts] == -1))).all():
                return False  # a lone '.' stands for all of a sample's values; any other count is wrong
            # each sample's values: starts + 0, 1 .. alleles-1 (all the lone '.' for a missing AD)
            if (alts == alts[0]).all():  # one allele count in the run: a rectangle
                offset = np.arange(int(alts[0]) + 1) * full[:, None]
                ad = _packed(values[starts[:, None] + offset])
                out["ad"] = _cut(ad, 4 * n * (int(alts[0]) + 1))
            else:
                offset = np.arange(int(alleles.sum())) - np.repeat(np.cumsum(alleles) - alleles, alleles)
                ad = _packed(values[np.repeat(starts, alleles) + offset * np.repeat(full, alleles)])
                bounds = [0, *(4 * n * np.cumsum(alts + 1)).tolist()]
                out["ad"] = [ad[x:y] for x, y in pairwise(bounds)]
        for r, (record, _, _) in enumerate(entries):
            if spec.gt:
                record.update(ploidy=out["ploidy"][r], gt=out["gt"][r], phased=out["phased"][r])
            else:
                record.update(ploidy=0, gt=b"", phased=self.zero_phase)
            record["dp"] = out["dp"][r] if "dp" in out else None
            record["gq"] = out["gq"][r] if "gq" in out else None
            record["ad"] = out["ad"][r] if "ad" in out else None
        return True

    def _column_count(self, line: bytes) -> str:
        columns = line.count(b"\t") + 1
        return f"{columns} columns, the header has {self.columns}"

    def _alts(self, alt: bytes) -> list[str]:
        if alt == b".":
            return []
        if not alt.translate(None, _BASES + b","):  # plain base alleles: the common case
            alts = alt.decode("ascii").split(",")
            if "" in alts:
                raise _Bad(f"ALT {alt.decode()!r} has an empty allele")
        else:
            alts = alt.decode("utf-8").split(",")
            for a in alts:
                if not (_BASES_RE.fullmatch(a) or a == "*" or _SYMBOLIC.fullmatch(a) or _BREAKEND.fullmatch(a)):
                    raise _Bad(f"ALT allele {a!r} is neither bases, '*', a <symbolic> allele nor a breakend")
        return alts

    def _info(self, info: bytes, n_alts: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ac": None, "an": None, "af": None, "dp": None, "end": None,
                               "svtype": None, "svlen": None, "other": {}}
        if info == b".":
            return out
        other = out["other"]
        seen: set[str] = set()
        # Items repeat across records ("AN=200", "AC=0"): each distinct one is checked and typed once.
        items = self.info_items.get(n_alts)
        if items is None or len(items) >= 100_000:  # bounded: memory stays constant on any input
            items = self.info_items[n_alts] = {}
        for item in info.decode("utf-8").split(";"):
            parsed = items.get(item)
            if parsed is None:
                if not item:
                    continue  # a stray ';' carries nothing
                key = item.partition("=")[0]
                if key in seen:
                    raise _Bad(f"INFO key {key} appears twice")
                parsed = items[item] = self._info_item(item, n_alts)
            key, slot, value = parsed
            if key in seen:
                raise _Bad(f"INFO key {key} appears twice")
            seen.add(key)
            if slot is None:
                other[key] = value
            else:
                out[slot] = value.copy() if isinstance(value, list) else value  # records share no lists
        return out

    @staticmethod
    def _info_item(item: str, n_alts: int) -> tuple[str, str | None, Any]:
        """(key, typed field or None for `other`, value) of one INFO item; _Bad when it is invalid."""
        key, eq, value = item.partition("=")
        if not key or key.strip() != key or " " in key:
            raise _Bad(f"INFO key {key!r} is not a valid key")
        if key not in _TYPED_INFO:
            return key, None, value
        if not eq:
            raise _Bad(f"INFO/{key} has no value")
        slot = key.lower()
        if key == "SVTYPE":
            return key, slot, value if value != "." else None
        if value == ".":
            return key, slot, None
        if key in ("AN", "DP", "END"):
            if not _is_uint(value):
                raise _Bad(f"INFO/{key}={value} is not a non-negative integer")
            return key, slot, int(value)
        parts = value.split(",")
        given = [p for p in parts if p != "."]
        if key == "AC":
            if not all(_is_uint(p) for p in given):
                raise _Bad(f"INFO/AC={value} is not a list of non-negative integers")
            typed: list[Any] = [int(p) for p in given]
        elif key == "SVLEN":
            try:
                typed = [int(p) for p in given]
            except ValueError:
                raise _Bad(f"INFO/SVLEN={value} is not a list of integers") from None
            if any(abs(v) >= 10**18 for v in typed):
                raise _Bad(f"INFO/SVLEN={value} is out of range")
        else:
            try:
                typed = [float(p) for p in given]
            except ValueError:
                raise _Bad(f"INFO/AF={value} is not a list of numbers") from None
            if any(f < 0 for f in typed):
                raise _Bad(f"INFO/AF={value} has a negative frequency")
        if len(given) != len(parts) or (key != "SVLEN" and len(parts) != n_alts):
            # Some missing, or not one value per ALT allele: no typed list, the text is kept.
            return key, None, value
        return key, slot, typed

    # -- sample columns --------------------------------------------------------------------

    def _format(self, fmt: bytes) -> _Format:
        spec = self.formats.get(fmt)
        if spec is not None:
            return spec
        keys = fmt.split(b":")
        for key in keys:
            if not _FORMAT_KEY.fullmatch(key):
                raise _Bad(f"FORMAT key {key.decode('utf-8', 'replace')!r} is not a valid key")
        if len(set(keys)) != len(keys):
            raise _Bad(f"FORMAT {fmt.decode()} repeats a key")
        if b"GT" in keys and keys[0] != b"GT":
            raise _Bad("GT is not the first FORMAT key")
        spec = _Format(len(keys), keys[0] == b"GT",
                       *(keys.index(k) if k in keys else None for k in (b"DP", b"GQ", b"AD")))
        self.formats[fmt] = spec
        return spec

    def _skeleton(self, keys: int, sep: bytes) -> bytes:
        # What a sample block reduces to, separators only, when every sample has exactly `keys` parts.
        skel = self.skeletons.get((keys, sep))
        if skel is None:
            skel = self.skeletons[(keys, sep)] = b"\t".join([sep * (keys - 1)] * self.n)
        return skel

    def _samples(self, record: dict[str, Any], fmt: bytes, tail: bytes, n_alts: int) -> None:
        if fmt == b".":  # this record has no sample data
            record.update(ploidy=0, gt=b"", phased=self.zero_phase, dp=None, gq=None, ad=None)
            return
        spec = self._format(fmt)
        k = spec.keys
        if k == 1:
            if b":" in tail:
                raise _Bad(self._too_many_fields(tail.split(b"\t"), k))
            fields = [tail.split(b"\t")] if not spec.gt else None
            gt_text = tail
        elif tail.translate(None, _NOT_FIELD_SEP) == self._skeleton(k, b":"):
            # Every sample has every FORMAT field: one split, then strided slices per field.
            flat = tail.replace(b":", b"\t").split(b"\t")
            fields = [flat[i::k] for i in range(k)]
            gt_text = None
        else:  # trailing fields dropped in some samples, or too many
            cols = tail.split(b"\t")
            split = [c.split(b":") for c in cols]
            if max(map(len, split)) > k:
                raise _Bad(self._too_many_fields(cols, k))
            fields = [[s[i] if i < len(s) else b"." for s in split] for i in range(k)]
            gt_text = None
        if spec.gt:
            if gt_text is None:
                gt_text = b"\t".join(fields[0])  # type: ignore[index]
            self._genotypes(record, gt_text, n_alts)
        else:
            record.update(ploidy=0, gt=b"", phased=self.zero_phase)
        record["dp"] = None if spec.dp is None else self._ints(fields[spec.dp], "DP")  # type: ignore[index]
        record["gq"] = None if spec.gq is None else self._ints(fields[spec.gq], "GQ")  # type: ignore[index]
        record["ad"] = None if spec.ad is None else self._ad(fields[spec.ad], n_alts + 1)  # type: ignore[index]

    def _too_many_fields(self, cols: list[bytes], k: int) -> str:
        for index, col in enumerate(cols):
            if col.count(b":") >= k:
                return f"{_sample(index)} has more fields than FORMAT declares ({k})"
        return "a sample has more fields than FORMAT declares"

    def _genotypes(self, record: dict[str, Any], text: bytes, n_alts: int) -> None:
        n = self.n
        # Fast path: every call diploid with one-digit alleles ("0|1", "./."): strided slices of the
        # tab-joined GT text give the first alleles, separators and second alleles, translated in C.
        if len(text) == 4 * n - 1 and text[3::4].count(b"\t") == n - 1:
            first, seps, second = text[0::4], text[1::4], text[2::4]
            # One C call checks syntax and range: delete every allele this record allows, see what is left.
            allowed = _ALLELE_CHARS[n_alts] if n_alts < 10 else _ALLELE_CHARS[9]
            if not seps.translate(None, b"/|") and not (first + second).translate(None, allowed):
                gt = bytearray(2 * n)
                gt[0::2] = first.translate(_ALLELE_TABLE)
                gt[1::2] = second.translate(_ALLELE_TABLE)
                record.update(ploidy=2, gt=bytes(gt), phased=seps.translate(_PHASE_TABLE))
                return
        cache = self.gt_cache
        calls = text.split(b"\t")
        entries = [cache.get(c) or self._parse_gt(c, i) for i, c in enumerate(calls)]
        top = max(e[3] for e in entries)
        if top > n_alts:
            bad = next(i for i, e in enumerate(entries) if e[3] > n_alts)
            raise _Bad(f"{_sample(bad)}: GT {calls[bad].decode()} refers to allele {entries[bad][3]}, "
                       f"the record has {n_alts} ALT allele(s)")
        ploidy = max(e[1] for e in entries)
        if all(e[1] == ploidy for e in entries):
            packed = b"".join(e[0] for e in entries)
        else:
            pad = (GT_UNUSED & 0xFF).to_bytes(1, "little")
            packed = b"".join(e[0] + pad * (ploidy - e[1]) for e in entries)
        record.update(ploidy=ploidy, gt=packed, phased=bytes(e[2] for e in entries))

    def _parse_gt(self, call: bytes, index: int) -> tuple[bytes, int, int, int]:
        """(packed alleles, ploidy, phased, highest allele index) of one GT value, cached by its text."""
        text = call
        if not text or text == b".":
            entry = (b"\xff", 1, 1, -1)  # pysam reports a haploid call as phased; so do we
        else:
            # VCF 4.4 allows a leading phase marker ("|0"), about phasing with the previous record;
            # like pysam, `phased` only says whether this call's alleles are phased with each other.
            if text[:1] in (b"/", b"|"):
                text = text[1:]
            parts = _GT_SPLIT.split(text)
            alleles, seps = parts[0::2], parts[1::2]
            values = []
            for a in alleles:
                if a == b".":
                    values.append(GT_MISSING)
                elif a.isdigit():
                    values.append(int(a))
                else:
                    raise _Bad(f"{_sample(index)}: GT {call.decode('utf-8', 'replace')!r} "
                               "is not a genotype")
            if max(values) > 127:
                raise _Bad(f"{_sample(index)}: GT allele {max(values)}: gdx packs allele "
                           "indexes in one signed byte (0 to 127)")
            phased = int(all(s == b"|" for s in seps))
            entry = (bytes(v & 0xFF for v in values), len(values), phased, max(values))
        self.gt_cache[call] = entry
        return entry

    def _pack(self, text: bytes) -> bytes | None:
        """int32 LE of one FORMAT integer text ('.' missing), or None when it is not one."""
        # Parsing text to int costs ~100 ns a value; depths and qualities repeat, so each distinct
        # text is validated once and its packed bytes looked up after that.
        got = self.packed.get(text)
        if got is None:
            if text.isdigit():
                number = int(text)
            else:
                # Old GATK declared GQ as Float and wrote "15.04": round such values half up.
                try:
                    value = float(text)
                except ValueError:
                    return None
                if not (value >= 0 and math.isfinite(value)):
                    return None
                number = int(value + 0.5)
            if number > 2147483647:
                return None
            if len(self.packed) >= 1_000_000:  # bounded: memory stays constant on any input
                self.packed.clear()
                self.packed.update({b".": _MISSING_PACKED, b"": _MISSING_PACKED})
            got = self.packed[text] = number.to_bytes(4, "little")
        return got

    def _ints(self, values: list[bytes], key: str) -> bytes:
        """FORMAT integers (DP, GQ) packed as int32 LE, '.' as MISSING_INT."""
        try:
            return b"".join(map(self.packed.__getitem__, values))
        except KeyError:
            pass
        out = []
        for index, v in enumerate(values):
            packed = self._pack(v)
            if packed is None:
                raise _Bad(f"{_sample(index)}: {key} {v.decode('utf-8', 'replace')!r} is not a non-negative "
                           "number below 2^31")
            out.append(packed)
        return b"".join(out)

    def _ad(self, values: list[bytes], alleles: int) -> bytes:
        """FORMAT/AD packed as int32 LE, `alleles` values per sample; a lone '.' is all missing."""
        # Looked up whole per sample ("12,3"): far fewer distinct texts than samples x alleles values.
        cache = self.ad_cache.get(alleles)
        if cache is None or len(cache) >= 1_000_000:  # bounded: memory stays constant on any input
            missing = _MISSING_PACKED * alleles
            cache = self.ad_cache[alleles] = {b".": missing, b"": missing}
        try:
            return b"".join(map(cache.__getitem__, values))
        except KeyError:
            pass
        for index, v in enumerate(values):
            if v in cache:
                continue
            parts = v.split(b",")
            if len(parts) != alleles:
                raise _Bad(f"{_sample(index)}: AD has {len(parts)} values, the record has {alleles} alleles")
            packed = [self._pack(p) for p in parts]
            if None in packed:
                raise _Bad(f"{_sample(index)}: AD {v.decode('utf-8', 'replace')!r} is not a list of "
                           "non-negative numbers below 2^31")
            cache[v] = b"".join(packed)  # type: ignore[arg-type]
        return b"".join(map(cache.__getitem__, values))


# ---------------------------------------------------------------------------------------------
# Files


@dataclass
class VariantFile:
    """An open VCF or BCF file: header facts, checksums and a record iterator (`records()`).

    Use `open_variant_file`; close it (or use `with`) to release a BCF handle.
    """

    path: Path
    kind: str  # VCF or BCF
    compression: str  # none, gzip or bgzf
    size: int
    sha256: str
    md5: str
    file_format: str = ""
    header: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    contigs: list[str] = field(default_factory=list)
    contig_lengths: dict[str, int | None] = field(default_factory=dict)
    assembly: str = "unknown"
    records_read: int = 0
    _lines: _TextLines | None = None
    _stamp: tuple[int, int] = (0, 0)  # size and mtime when the checksums were taken
    _has_format: bool = False
    _bcf: Any = None
    _crlf: bool = False
    _head: bytes = b""
    _tail: bytes = b""

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def file_id(self) -> str:
        return "sha256:" + self.sha256

    @property
    def bytes_read(self) -> int:
        """Compressed bytes of the file consumed so far (for a progress bar whose total is `size`)."""
        if self._bcf is not None:
            offset = self._bcf.tell()
            # BCF tells a BGZF virtual offset (compressed offset << 16 | offset in block).
            return min(self.size, offset >> 16) if self.compression == "bgzf" else min(self.size, offset)
        return self._lines.bytes_read if self._lines else 0

    def __enter__(self) -> VariantFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._bcf is not None:
            self._bcf.close()
            self._bcf = None

    def error(self, reason: str, *, line: int | None = None, record: int | None = None,
              reason_code: str | None = None) -> VcfError:
        return VcfError(self.file_name, reason, line=line, record=record, reason_code=reason_code)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record as an `org.gdx.VariantRecord` dict, in file order; VcfError on the first bad one."""
        parser = _RecordParser(self.samples, self._has_format)
        if self._bcf is not None:
            yield from self._bcf_records(parser.parse)
            return
        assert self._lines is not None
        lines = self._lines
        crlf = self._crlf
        fixed = parser.fixed
        block = max(1, _BLOCK_SAMPLES // max(1, parser.n))
        pending: list[tuple[dict[str, Any], bytes, bytes]] = []  # records whose samples are still text
        numbers: list[int] = []  # their line numbers
        try:
            while True:
                try:
                    line = next(lines)
                except StopIteration:
                    break
                except VcfError:  # unreadable or truncated: the records read before it go out first
                    yield from self._complete(parser, pending, numbers)
                    raise
                if crlf and line[-1:] == b"\r":
                    line = line[:-1]
                if not line:
                    continue  # blank lines carry nothing (often a trailing one)
                try:
                    record, fmt, tail = fixed(line)
                except (_Bad, UnicodeDecodeError) as exc:
                    # the records before this line are good: they go out first, as they would one by one
                    yield from self._complete(parser, pending, numbers)
                    reason = str(exc) if isinstance(exc, _Bad) else "not UTF-8 text"
                    raise self.error(reason, line=lines.lines_read) from None
                if tail is None:
                    self.records_read += 1
                    yield record
                    continue
                pending.append((record, fmt, tail))
                numbers.append(lines.lines_read)
                if len(pending) >= block:
                    yield from self._complete(parser, pending, numbers)
                    pending, numbers = [], []
            yield from self._complete(parser, pending, numbers)
            self._check_unchanged()
        finally:
            self.close()

    def _complete(self, parser: _RecordParser, pending: list[tuple[dict[str, Any], bytes, bytes]],
                  numbers: list[int]) -> Iterator[dict[str, Any]]:
        """The pending records with their samples parsed; VcfError after the good ones on a bad one."""
        error: VcfError | None = None
        try:
            parser.fill_samples(pending)
        except _Bad as exc:
            good, error = exc.at, self.error(str(exc), line=numbers[exc.at])
        else:
            good = len(pending)
        for record, _, _ in pending[:good]:
            self.records_read += 1
            yield record
        if error is not None:
            raise error

    def _check_unchanged(self) -> None:
        # A center may still be writing the file: then the checksums (the file id) describe other
        # bytes than the records just read.
        stat = self.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != self._stamp:
            raise self.error("the file changed while it was read: send it again once it is complete",
                             reason_code="file-changed")

    def _bcf_records(self, parse: Callable[[bytes], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        verbosity = pysam.set_verbosity(0)
        try:
            it = iter(self._bcf)
            while True:
                number = self.records_read + 1
                try:
                    rec = next(it)
                except StopIteration:
                    break
                except (OSError, ValueError) as exc:
                    raise self.error(f"unreadable BCF record ({exc})", record=number,
                                     reason_code="corrupt-file") from None
                try:
                    record = parse(str(rec).rstrip("\n").encode())
                except _Bad as exc:
                    raise self.error(str(exc), record=number) from None
                record["qual"] = rec.qual  # the stored float32: htslib's text keeps only 6 digits
                self.records_read += 1
                yield record
            self._check_unchanged()
        finally:
            pysam.set_verbosity(verbosity)
            self.close()


def open_variant_file(path: str | Path) -> VariantFile:
    """Check and open a VCF/BCF: checksums (one pass over the bytes), kind, compression, header.

    VcfError when the file is empty, not VCF/BCF, truncated at a BGZF block boundary, or its
    header is invalid (BAD_INPUT.md).
    """
    vf = _probe(Path(path))
    _load(vf)
    return vf


def _probe(path: Path) -> VariantFile:
    """The file's facts from its bytes alone: checksums, size, kind, compression."""
    name = path.name
    try:
        stat = path.stat()
        facts = _file_facts(path)
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise VcfError(name, f"cannot read the file ({exc.strerror or exc})", reason_code="unreadable") from None
    kind, compression = "VCF", "none"
    if head[:2] == b"\x1f\x8b":
        # BGZF is gzip whose header carries a 'BC' extra subfield (SAM/BAM spec 4.1).
        compression = "bgzf" if len(head) >= 18 and head[3] & 4 and head[12:14] == b"BC" else "gzip"
        try:
            start = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error:
            start = b""  # reported when the header is read
        kind = "BCF" if start.startswith(b"BCF\x02") else "VCF"
    elif head.startswith(b"BCF\x02"):
        kind = "BCF"
    vf = VariantFile(path=path, kind=kind, compression=compression, size=facts.size, sha256=facts.sha256,
                     md5=facts.md5)
    vf._head, vf._tail = head, facts.tail
    vf._stamp = (stat.st_size, stat.st_mtime_ns)
    return vf


def _load(vf: VariantFile) -> None:
    """Read and check the header (VcfError when it is unusable) and fill in the header facts."""
    head = vf._head
    if not head:
        raise vf.error("empty file (0 bytes)", reason_code="empty-file")
    start = head[:64]
    if vf.compression != "none":
        try:
            start = zlib.decompressobj(31).decompress(head, 64)
        except zlib.error as exc:
            raise vf.error(f"corrupt {vf.compression} data at the start of the file ({exc})",
                           reason_code="corrupt-file") from None
        if vf.compression == "bgzf" and vf._tail != BGZF_EOF:
            raise vf.error("no BGZF end-of-file marker: the file is truncated", reason_code="truncated")
    if vf.kind == "BCF":
        _open_bcf(vf)
    else:
        _read_vcf_header(vf, start)
    vf.assembly = guess_assembly(vf.header, vf.contig_lengths)


def _open_bcf(vf: VariantFile) -> None:
    verbosity = pysam.set_verbosity(0)
    try:
        bcf = pysam.VariantFile(str(vf.path))
    except (OSError, ValueError) as exc:
        raise vf.error(f"invalid BCF header ({exc})") from None
    finally:
        pysam.set_verbosity(verbosity)
    vf._bcf = bcf
    header = bcf.header
    vf.file_format = header.version
    vf.header = [line for line in str(header).splitlines() if line.startswith("##")]
    vf.samples = list(header.samples)
    vf._has_format = bool(vf.samples)
    vf.contigs = [c.name for c in header.contigs.values()]
    vf.contig_lengths = {c.name: c.length for c in header.contigs.values()}


def _read_vcf_header(vf: VariantFile, start: bytes) -> None:
    if not start.startswith(b"##fileformat="):
        if start.translate(None, bytes(range(9, 14)) + bytes(range(32, 256))):  # control bytes
            raise vf.error("not a VCF file (binary data that is neither VCF nor BCF)")
        raise vf.error("not a VCF file: the first line must be ##fileformat=VCFv4.x", line=1)
    lines = _TextLines(vf.path, vf.compression, vf.file_name)
    vf._lines = lines
    header: list[str] = []
    for raw in lines:
        if raw.endswith(b"\r"):
            vf._crlf = True
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise vf.error("header is not UTF-8 text", line=lines.lines_read) from None
        number = lines.lines_read
        if number == 1:
            version = text.partition("=")[2]
            if not _FILEFORMAT.fullmatch(version):
                raise vf.error(f"unsupported file format {version!r}: gdx reads VCFv4.0 to VCFv4.5", line=1)
            vf.file_format = version
        if text.startswith("##"):
            header.append(text)
            if text.startswith("##contig="):
                _add_contig(vf, text, number)
            continue
        if text.startswith("#CHROM"):
            _columns(vf, text, number)
            vf.header = header
            return  # the data lines continue from the same iterator
        if text.startswith("#"):
            raise vf.error("expected the #CHROM header line", line=number)
        raise vf.error("data line before the #CHROM header line (is a header line broken across lines?)",
                       line=number)
    raise vf.error("no #CHROM header line")


def _add_contig(vf: VariantFile, text: str, number: int) -> None:
    fields = _structured(text[len("##contig="):])
    if fields is None or "ID" not in fields:
        raise vf.error("malformed ##contig line (needs <ID=name,...>)", line=number)
    name = fields["ID"]
    if not _valid_contig(name):
        raise vf.error(f"##contig ID {name!r} is not a valid contig name", line=number)
    length = fields.get("length")
    vf.contigs.append(name)
    vf.contig_lengths[name] = int(length) if length and length.isdigit() else None


def _columns(vf: VariantFile, text: str, number: int) -> None:
    columns = text.split("\t")
    if columns[:8] != _FIXED:
        raise vf.error("the #CHROM line must start with the 8 tab-separated columns "
                       + " ".join(_FIXED), line=number)
    if len(columns) == 8:
        return
    if columns[8] != "FORMAT":
        raise vf.error(f"column 9 of the #CHROM line is {columns[8]!r}, expected FORMAT", line=number)
    samples = columns[9:]
    if not samples:
        raise vf.error("the #CHROM line has a FORMAT column but no sample columns", line=number)
    if "" in samples:
        raise vf.error("the #CHROM line has an empty sample name", line=number)
    if len(set(samples)) != len(samples):
        first: dict[str, int] = {}
        for column, sample in enumerate(samples, start=10):
            if sample in first:
                raise vf.error(f"the #CHROM line repeats a sample name (columns {first[sample]} and {column})",
                               line=number)
            first[sample] = column
    vf.samples = samples
    vf._has_format = True


# ---------------------------------------------------------------------------------------------
# Events


def _manifest(vf: VariantFile, center: str, dataset: str, phase: str, assembly: str) -> dict[str, Any]:
    return {
        "center": center,
        "dataset": dataset,
        "file_id": vf.file_id,
        "phase": phase,
        "kind": vf.kind,
        "file_name": vf.file_name,
        "size": vf.size,
        "sha256": vf.sha256,
        "md5": vf.md5,
        "compression": vf.compression,
        "file_format": vf.file_format,
        "assembly": assembly,
        "header": list(vf.header),
        "contigs": list(vf.contigs),
        "samples": list(vf.samples),
        "record_count": None,
        "batch_count": None,
        "reason": None,
    }


def failed_manifest(start: dict[str, Any], reason: str, *, record_count: int | None = None,
                    batch_count: int | None = None) -> dict[str, Any]:
    """The FAILED manifest of a file whose START manifest is `start`: downstream drops its batches.

    record_count/batch_count, when given, say how much was sent before the failure.
    """
    return {**start, "phase": "FAILED", "reason": reason, "record_count": record_count,
            "batch_count": batch_count}


def iter_events(
    path: str | Path,
    center: str,
    dataset: str,
    batch_size: int = 1000,
    assembly: str | None = None,
    progress: Callable[[int], object] | None = None,
    max_batch_bytes: int | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """("org.gdx.FileManifest", START), ("org.gdx.VariantBatch", batch)..., ("org.gdx.FileManifest", END).

    Streams in constant memory. A batch holds `batch_size` records, fewer where the batch would encode
    to more than `max_batch_bytes` (thousands of samples: each record carries every sample's call),
    but at least one. `assembly` overrides the header's. `progress(n)` is called after
    each batch with the compressed bytes consumed since the previous call (tqdm's `update`; the
    total is the file size). On bad input raises VcfError, possibly after some batches: END is then
    never yielded, and the error's `failed_manifest` is the FAILED manifest to send.
    """
    vf = _probe(Path(path))  # unreadable: VcfError without a manifest, there is no file id
    try:
        _load(vf)
    except VcfError as exc:
        exc.failed_manifest = failed_manifest(_manifest(vf, center, dataset, "START", assembly or "unknown"),
                                              exc.reason, record_count=0, batch_count=0)
        raise
    with vf:
        chosen = assembly or vf.assembly
        start = _manifest(vf, center, dataset, "START", chosen)
        yield MANIFEST, start
        batch_index = 0
        records_sent = 0
        reported = 0
        try:
            cap = 0
            if max_batch_bytes:  # what a batch carries beside its records: the sample list above all
                overhead = 1024 + sum(len(x.encode()) + 5 for x in (center, dataset, vf.file_id, *vf.samples))
                cap = max(1, max_batch_bytes - overhead)
            for batch in _grouped(vf.records(), batch_size, cap):
                yield BATCH, _batch(vf, center, dataset, chosen, batch_index, records_sent, batch)
                batch_index += 1
                records_sent += len(batch)
                if progress is not None:
                    done = vf.bytes_read
                    progress(done - reported)
                    reported = done
        except VcfError as exc:
            exc.record_count, exc.batch_count = records_sent, batch_index
            exc.failed_manifest = failed_manifest(start, exc.reason, record_count=records_sent,
                                                  batch_count=batch_index)
            raise
        if progress is not None and vf.size > reported:
            progress(vf.size - reported)
        yield MANIFEST, {**start, "phase": "END", "record_count": records_sent, "batch_count": batch_index}


def _grouped(records: Iterator[dict[str, Any]], batch_size: int, byte_cap: int) -> Iterator[list[dict[str, Any]]]:
    """Records in lists of batch_size, cut earlier where the next would pass byte_cap (0: no cap)."""
    batch: list[dict[str, Any]] = []
    batch_bytes = 0
    for record in records:
        if byte_cap:
            size = record_bytes(record)
            if batch and batch_bytes + size > byte_cap:
                yield batch
                batch, batch_bytes = [], 0
            batch_bytes += size
        batch.append(record)
        if len(batch) >= batch_size:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def record_bytes(record: dict[str, Any]) -> int:
    """A VariantRecord's Avro size, over-estimated for ASCII text: byte arrays, texts, 256 for the rest.

    Text is counted in characters; the producer still refuses an event over the limit (`too-large`).
    """
    other = record["info"]["other"]
    return (256 + len(record["gt"]) + len(record["phased"]) + len(record["dp"] or b"") + len(record["gq"] or b"")
            + len(record["ad"] or b"") + len(record["ref"]) + sum(map(len, record["alts"]))
            + sum(map(len, record["ids"])) + sum(map(len, record["filters"]))
            + sum(map(len, other)) + sum(map(len, other.values())) + 10 * len(other))


def _batch(vf: VariantFile, center: str, dataset: str, assembly: str, index: int, first: int,
           records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "center": center,
        "dataset": dataset,
        "file_id": vf.file_id,
        "batch_index": index,
        "first_record": first,
        "record_count": len(records),
        "assembly": assembly,
        "samples": vf.samples,
        "records": records,
    }
