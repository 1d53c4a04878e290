"""What a ``perf_scale.py`` report says: PASS/MISS against the targets of its module doc (HNSW >=
10x flat's batch queries/s at recall@k >= 0.95; IVF-PQ index.faiss <= 1/8 of flat's at recall@k
>= 0.9; re-ranked IVF-PQ in <= 1/8 of flat's RAM at recall@k >= 0.95), per corpus size, and the
table of every index and setting measured."""

from __future__ import annotations

from measure import MiB


def targets(report: dict, k: int) -> list[str]:
    """PASS/MISS lines of the two targets (module doc), per size."""
    lines, key = [], f"recall_at_{k}"
    for size, entry in report["runs"].items():
        got = {r["index"]: r for r in entry["indexes"] if "search" in r}
        if "flat" not in got:
            lines.append(f"n/a   N={int(size):,}: no flat index measured to compare with")
            continue
        flat_qps, flat_bytes = got["flat"]["search"][0]["qps_batch"], got["flat"]["index_bytes"]
        hnsw = [(s["qps_batch"] / flat_qps, f"hnsw {s['setting']}", s[key])
                for s in got.get("hnsw", {}).get("search", []) if s[key] >= 0.95]
        ivfpq = [(r["index_bytes"] / flat_bytes, f"{name} {s['setting']}", s[key])
                 for name, r in got.items() if name.startswith("ivfpq") for s in r["search"]
                 if s[key] >= 0.9]
        for what, measured, best, ok in (
                (f"HNSW >= 10x flat's q/s at recall@{k} >= 0.95", "hnsw" in got,
                 max(hnsw, default=None), lambda ratio: ratio >= 10),
                (f"IVF-PQ <= 1/8 of flat's bytes at recall@{k} >= 0.9",
                 any(name.startswith("ivfpq") for name in got), min(ivfpq, default=None),
                 lambda ratio: ratio <= 1 / 8)):
            if not measured:
                lines.append(f"n/a   N={int(size):,}: {what}: not measured in this run")
                continue
            passed = best is not None and ok(best[0])
            lines.append(f"{'PASS' if passed else 'MISS'}  N={int(size):,}: {what}: " + (
                f"best {best[0]:.3g} x flat's ({best[1]}, recall {best[2]})" if best
                else "no setting reaches that recall"))
    return lines


def rerank_targets(report: dict, k: int) -> list[str]:
    """PASS/MISS of the re-ranking target (module doc) per size, with the best setting's RSS."""
    lines, key = [], f"recall_at_{k}"
    for size, entry in report["runs"].items():
        got = {r["index"]: r for r in entry["indexes"] if "search" in r}
        ranked = [(name, r, s) for name, r in got.items() for s in r["search"]
                  if "vector_bytes_per_query" in s]
        if "flat" not in got or not ranked:
            continue
        budget = got["flat"]["rss_mib"]["ram"]["loaded"] / 8
        best = max(((s["qps_batch"], name, s, r["rss_mib"]["ram"]) for name, r, s in ranked
                    if s[key] >= 0.95 and r["rss_mib"]["ram"]["loaded"] <= budget),
                   key=lambda hit: hit[0], default=None)
        lines.append(f"{'PASS' if best else 'MISS'}  N={int(size):,}: re-ranked IVF-PQ, RSS <= {budget:.0f} "
                     f"MiB (1/8 of flat's) at recall@{k} >= 0.95: " + (
                         f"fastest {best[1]} {best[2]['setting']} ({best[0]} q/s, recall {best[2][key]}, RSS "
                         f"{best[3]['loaded']} MiB loaded, {best[3]['searched']} searched, "
                         f"{best[3]['searched_anon']} of it not file pages)" if best else "none"))
    return lines


def table(report: dict, k: int) -> str:
    head = (f"{'N':>11} {'index':<10} {'setting':<13} {'build s':>8} {'MiB':>7} {'B/vec':>7} "
            f"{'RSS MiB':>8} {'mmap MiB':>8} {'q/s':>8} {'q/s 1by1':>8} {'recall@' + str(k):>9} "
            f"{'real':>6}")
    lines = [head, "-" * len(head)]
    for size, entry in report["runs"].items():
        for r in entry["indexes"]:
            if "skipped" in r:
                lines.append(f"{int(size):>11,} {r['index']:<10} {r['skipped']}")
            for s in r.get("search", []):
                real = s[f"real_recall_at_{k}"]
                lines.append(
                    f"{int(size):>11,} {r['index']:<10} {s['setting']:<13} {r['build_s']:>8.1f} "
                    f"{r['index_bytes'] / MiB:>7.1f} {r['bytes_per_vector']:>7.1f} "
                    f"{r['rss_mib']['ram']['loaded']:>8.1f} {r['rss_mib']['mmap']['loaded']:>8.1f} "
                    f"{s['qps_batch']:>8.1f} {s.get('qps_single', '-'):>8} "
                    f"{s[f'recall_at_{k}']:>9.4f} {'-' if real is None else f'{real:.3f}':>6}")
    return "\n".join(lines)
