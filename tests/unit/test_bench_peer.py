"""The file the benchmark gives bff-tools in place of the 2504-sample one: same genotypes, one record
per ALT allele, a SnpEff ANN entry on each (bench.e2e_bench.annotated_copy)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from bench.e2e_bench import annotated_copy

VCF = """##fileformat=VCFv4.2
##contig=<ID=1,length=249250621>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##INFO=<ID=AC,Number=A,Type=Integer,Description="Allele count">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tS3
1\t100\trs1\tA\tC\t50\tPASS\tAC=1\tGT\t0|1\t0|0\t0|0
1\t200\trs2\tG\tT,C\t50\tPASS\tAC=1,2\tGT\t0|1\t2|2\t0|0
"""


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools is not installed (make install adds it)")
def test_annotated_copy_splits_alleles_keeps_genotypes_and_annotates_every_record(tmp_path: Path) -> None:
    src = tmp_path / "in.vcf"
    src.write_text(VCF)
    out = annotated_copy(src, tmp_path / "out.vcf.gz")
    assert out is not None
    lines = gzip.open(out, "rt").read().splitlines()
    header = [line for line in lines if line.startswith("##INFO=<ID=ANN")]
    assert len(header) == 1 and "Allele | Annotation | Annotation_Impact" in header[0]
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    assert [(r[1], r[3], r[4]) for r in rows] == [("100", "A", "C"), ("200", "G", "T"), ("200", "G", "C")]
    assert all(f"ANN={r[4]}|intergenic_region|MODIFIER|" in r[7] for r in rows)
    # the split records say which sample carries which allele, as the multi-allelic one did
    assert [r[9:] for r in rows] == [["0|1", "0|0", "0|0"], ["0|1", "0|0", "0|0"], ["0|0", "1|1", "0|0"]]
