"""`SizeTable`: bytes of a program's tensors in each storage form its passes make possible.

Rows, each the whole program (weights the passes did not touch stay float32):
    fp32          every float tensor at 4 bytes
    int8          conv/linear weights at 1 byte + one float32 scale per output channel
    k-means b-bit packed b-bit indices + float32 codebooks   (when share_weights_kmeans ran)
    +sparsity     indices of kept weights only + a 1-bit mask (when sparsify ran; kept float32
                  values + mask without k-means)
    1/8-bit       binarize's codes (1 or 8 bits) + one float32 scale per channel
    +encoding     the bytes of `gcc_gan.encode`'s artifact (Huffman-coded streams + header)
The first rows are arithmetic on the annotations; `+encoding` is measured by encoding. A row
whose pass did not run is left out.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from .summary import si


@dataclass(frozen=True)
class SizeRow:
    name: str
    bytes: int
    detail: str = ""
    psnr: float | None = None       # dB vs the original output, when the caller measured it


@dataclass(frozen=True)
class SizeTable:
    title: str
    rows: tuple[SizeRow, ...]

    @property
    def baseline(self) -> int:
        return self.rows[0].bytes if self.rows else 0

    def ratio(self, row: SizeRow) -> float:
        """How many times smaller than the first row (fp32)."""
        return self.baseline / row.bytes if row.bytes else math.inf

    def to_dict(self) -> dict:
        return {"title": self.title,
                "rows": [{"name": r.name, "bytes": r.bytes, "ratio": self.ratio(r),
                          "detail": r.detail, "psnr": r.psnr} for r in self.rows]}

    def _cells(self, r: SizeRow) -> list[str]:
        cells = [r.name, f"{r.bytes:,}", si(r.bytes, "B"), f"{self.ratio(r):.1f}x"]
        if self._has_psnr:
            cells.append("-" if r.psnr is None else "inf" if math.isinf(r.psnr)
                         else f"{r.psnr:.1f} dB")
        return [*cells, r.detail]

    @property
    def _has_psnr(self) -> bool:
        return any(r.psnr is not None for r in self.rows)

    def _header(self) -> list[str]:
        return ["storage", "bytes", "size", "vs fp32", *(["PSNR"] if self._has_psnr else []),
                "detail"]

    def to_markdown(self) -> str:
        head = self._header()
        rule = "|".join("---" if h in ("storage", "detail") else "---:" for h in head)
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |", f"|{rule}|"]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def __rich__(self) -> Table:
        table = Table(title=self.title, header_style="bold")
        for h in self._header():
            table.add_column(h, justify="left" if h in ("storage", "detail") else "right")
        for r in self.rows:
            table.add_row(*self._cells(r))
        return table

    def __str__(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=140, color_system=None, force_terminal=False).print(self)
        return buf.getvalue()


def _bytes(t) -> int:
    return t.numel() * t.element_size()


def size_table(graph_or_result, *, title: str | None = None, encode: bool = True) -> SizeTable:
    """The size table of a GanGraph (or pass result) from its pass annotations; `encode=False`
    skips the measured `+encoding` row."""
    from .encode import encode_bytes, program, stored_tensors, weight_annotations
    from .passes.kmeans_share import packed_bytes
    from .passes.sparsify import weight_layers

    graph, gm = program(graph_or_result)
    tensors = {k: v.detach() for k, v in stored_tensors(gm).items()}
    shares, masks, bits = weight_annotations(gm)
    layers, _ = weight_layers(gm)
    floats = {k for k, t in tensors.items() if t.is_floating_point()}

    def total(override: dict[str, int] | None = None) -> int:
        override = override or {}
        return sum(override.get(k, 4 * t.numel() if k in floats else _bytes(t))
                   for k, t in tensors.items())

    fp32 = total()
    int8 = total({l.weight: tensors[l.weight].numel()
                    + 4 * tensors[l.weight].shape[l.out_axis] for l in layers})
    rows = [SizeRow("fp32", fp32, f"{len(tensors)} tensors"),
            SizeRow("int8", int8, f"{len(layers)} conv/linear weights at 1 byte + scales")]
    dense: dict[str, int] = {}
    if shares:
        widths = sorted({s.bits for s in shares.values()})
        dense = {k: packed_bytes(s.indices.size, s.bits) + s.codebook.nbytes
                 for k, s in shares.items()}
        rows.append(SizeRow(f"k-means {'/'.join(map(str, widths))}-bit", total(dense),
                            f"{len(shares)} shared weights: packed indices + codebooks"))
    if masks:
        kept = sum(int(m.mask.sum()) for m in masks.values())
        size = sum(m.mask.size for m in masks.values())
        sparse = {k: (packed_bytes(int(m.mask.sum()), shares[k].bits) + shares[k].codebook.nbytes
                      if k in shares and shares[k].zero_reserved else 4 * int(m.mask.sum()))
                  + packed_bytes(m.mask.size, 1) for k, m in masks.items()}
        name = "+sparsity" if shares else "sparse fp32"
        rows.append(SizeRow(f"{name} {1 - kept / size:.0%}", total({**dense, **sparse}),
                            f"{len(masks)} masked weights: kept values + 1-bit masks"))
    if bits:
        coded = {k: packed_bytes(b.codes.size, b.bits) + b.scale.nbytes for k, b in bits.items()}
        ones = sum(b.bits == 1 for b in bits.values())
        rows.append(SizeRow("1/8-bit", total(coded),
                            f"{ones} binarized, {len(bits) - ones} at 8 bits, + scales"))
    if encode:
        rows.append(SizeRow("+encoding", len(encode_bytes(graph)),
                            "gcc_gan.encode artifact (Huffman-coded streams + header)"))
    return SizeTable(title or f"{getattr(graph, 'model_class', type(gm).__name__)} storage",
                     tuple(rows))
