"""sdaudit's CPU benchmarks in one command; prints the table (markdown) and saves it with the raw numbers.

    python benchmarks/run.py                 # everything (about an hour on 2 cores)
    python benchmarks/run.py --quick         # tiny model only, small sizes (a few minutes)
    python benchmarks/run.py --only extraction,audit,analyses,memory
    python benchmarks/run.py --readme        # also replace the table in benchmarks/README.md

1. extraction: images/s and peak memory of sdaudit and of sdhelper 1.0.0 on the same saved pipeline,
   same images, same 45 layers, same batch (sdaudit with protocol 'paper', the identical computation;
   the outputs are compared);
2. audit: the full audit (45 layers; position probe, border/corner similarity, anomalies) per image:
   U-Net passes, wall time, peak memory, against the published pipeline's cost (its 92 passes per
   image times sdhelper's measured time per pass, plus its analyses: trained probe and n^4 tensors);
3. analyses: group_similarity on (100, 320, 64, 64) against the n^4 tensors; the closed-form probe
   against the trained one;
4. memory: peak resident memory of ``audit`` at N = 20, 80, 320 images (tiny model, 128 px).

Every measurement runs in a fresh process (``_common.run_worker``); timings are the best (and median)
of several rounds, since the machine may be shared. Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, PUBLISHED_PASSES, image_folder, machine, run_worker  # noqa: E402

WORK = Path(os.environ.get("SDAUDIT_BENCH_DIR", "/tmp/sdaudit-bench"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pipeline(spec: str) -> Path:
    """A saved diffusers folder of ``spec`` (sdhelper loads pipelines from folders), made once."""
    folder = WORK / f"pipe-{spec.replace(':', '-')}"
    if not (folder / "model_index.json").exists():
        log(f"saving {spec} to {folder}")
        code = ("import sys; from sdaudit.models import load_model; "
                "load_model(sys.argv[1], device='cpu').save_pretrained(sys.argv[2])")
        import subprocess

        subprocess.run([sys.executable, "-c", code, spec, str(folder)], check=True, capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folder


def bench_extraction(cfg) -> list[dict]:
    rows = []
    for spec, size, n, batch, rounds in cfg["extraction"]:
        folder = pipeline(spec)
        log(f"extraction {spec} {size}px: timing (both tools, interleaved)")
        timing = run_worker("bench_extraction.py", "--pipeline", folder, "--size", size, "--n", n, "--batch", batch,
                            "--rounds", rounds, "--check")
        memory = {}
        for tool in ("sdaudit", "sdhelper"):
            log(f"extraction {spec} {size}px: peak memory of {tool} alone")
            memory[tool] = run_worker("bench_extraction.py", "--pipeline", folder, "--size", size, "--n", n,
                                      "--batch", batch, "--rounds", 1, "--tools", tool)
        rows.append({"model": spec, "size": size, "n": n, "batch": batch, "timing": timing, "memory": memory})
    return rows


def bench_audit(cfg) -> list[dict]:
    rows = []
    for spec, size, n, batch, rounds in cfg["audit"]:
        folder = image_folder(WORK / f"images-{size}-n{n}", n, size)
        pipe = pipeline(spec)
        log(f"audit {spec} {size}px, {n} images, alternating with one sdhelper pass over them ({rounds} rounds)")
        model = str(pipe) if spec.startswith("arch:") else spec
        run = run_worker("bench_audit.py", "--model", model, "--images", folder, "--size", size, "--batch", batch,
                         "--analyses", "position,borders,anomalies", "--rounds", rounds, "--sdhelper", pipe)
        log(f"published analyses {spec} {size}px")
        published = run_worker("bench_analyses.py", "published", "--model", spec, "--size", size)
        per_pass = run["sdhelper_s_per_image_pass"]
        row = {"model": spec, "size": size, "n": n, "batch": batch, "sdaudit": run, "published_analysis": published,
               "published_passes": PUBLISHED_PASSES, "sdhelper_s_per_pass_image": per_pass,
               "published_s_per_image": PUBLISHED_PASSES * per_pass + published["analysis_s_per_image"]}
        row["speedup"] = row["published_s_per_image"] / run["seconds_per_image"]
        med = PUBLISHED_PASSES * run["sdhelper_s_per_image_pass_median"] + published["analysis_s_per_image"]
        row["speedup_median"] = med / run["seconds_per_image_median"]
        rows.append(row)
    return rows


def bench_analyses(cfg) -> dict:
    log("analyses: group_similarity vs n^4")
    groups = run_worker("bench_analyses.py", "groups", "--repeats", cfg["repeats"], "--brute-images", 3)
    log("analyses: closed-form vs trained probe")
    probe = run_worker("bench_analyses.py", "probe")
    return {"groups": groups, "probe": probe}


def bench_memory(cfg) -> list[dict]:
    rows = []
    size = cfg["memory_size"]
    for n in cfg["memory_n"]:
        folder = image_folder(WORK / f"images-{size}-mem", max(cfg["memory_n"]), size)
        subset = WORK / f"images-{size}-n{n}"
        subset.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            link = subset / f"img{i:05d}.png"
            if not link.exists():
                link.symlink_to(folder / f"img{i:05d}.png")
        log(f"memory: audit of {n} images (tiny, {size}px)")
        rows.append(run_worker("bench_audit.py", "--model", "tiny", "--images", subset, "--size", size,
                               "--layers", "paper"))
    return rows


# ----- the table ----------------------------------------------------------------------------------------
def _f(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def render(results: dict) -> str:
    m = results["machine"]
    out = [f"Measured {m['date']} on `{m['cpu']}`, nproc = {m['nproc']}, {m.get('mem_total_gib')} GiB RAM, "
           f"torch {m.get('torch')} ({m.get('torch_threads')} threads), shared machine: best of several rounds "
           f"(median in parentheses).", ""]
    targets = []
    if results.get("extraction"):
        out += ["**1. Extraction, CPU, sdaudit vs sdhelper 1.0.0** (same saved pipeline, same images, same 45 layers, "
                "same batch; sdaudit with protocol `paper`, the identical computation)", "",
                "| model | px | images | batch | sdaudit img/s | sdhelper img/s | sdaudit / sdhelper | "
                "max rel. diff of outputs | peak RSS sdaudit / sdhelper (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["extraction"]:
            t = r["timing"]["tools"]
            a, h = t["sdaudit"], t["sdhelper"]
            ratio = a["images_per_s_best"] / h["images_per_s_best"]
            ratio_med = a["images_per_s_median"] / h["images_per_s_median"]
            out.append(f"| {r['model']} | {r['size']} | {r['n']} | {r['batch']} | {_f(a['images_per_s_best'])} "
                       f"({_f(a['images_per_s_median'])}) | {_f(h['images_per_s_best'])} ({_f(h['images_per_s_median'])}) "
                       f"| {ratio:.2f}x ({ratio_med:.2f}x) | {r['timing'].get('max_rel_diff_vs_sdhelper', float('nan')):.1e} | "
                       f"{r['memory']['sdaudit']['peak_rss_mib']:.0f} / {r['memory']['sdhelper']['peak_rss_mib']:.0f} |")
            paired = statistics.median(r["timing"]["paired_ratios"])
            targets.append((f"extraction at least as fast as sdhelper on CPU ({r['model']}, {r['size']} px)",
                            f"{paired:.2f}x (median of {len(r['timing']['paired_ratios'])} paired rounds; "
                            f"best/best {ratio:.2f}x)", paired >= 1.0))
        out.append("")
    if results.get("audit"):
        out += ["**2. Full audit per image** (45 layers; position probe, border/corner similarity, anomalies). "
                f"Published pipeline: {PUBLISHED_PASSES} U-Net passes per image (1 for the probe, 2 per layer x 45 "
                "layers for the crop experiment, 1 for the anomalies), each costing the time of one sdhelper pass "
                "over the same images (timed in the same process, alternating with the audit), plus its analyses "
                "(trained probe, two n^4 tensors per layer) measured on random features of each layer's shape.", "",
                "| model | px | images | U-Net passes / image | s / image | peak RSS (MiB) | published passes | "
                "published s / image (sdhelper s/pass x 92 + analyses) | speed-up |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in results["audit"]:
            s = r["sdaudit"]
            pub = r.get("published_s_per_image")
            pa = r["published_analysis"]["analysis_s_per_image"]
            out.append(f"| {r['model']} | {r['size']} | {s['n']} | {s['unet_passes_per_image']} | "
                       f"{_f(s['seconds_per_image'])} | {s['peak_rss_mib']:.0f} | {r['published_passes']} | "
                       f"{_f(pub)} ({_f(r.get('sdhelper_s_per_pass_image'))} x 92 + {_f(pa)}) | "
                       f"{_f(r.get('speedup'), 1)}x ({_f(r.get('speedup_median'), 1)}x) |")
            targets.append((f"full audit <= 5 U-Net passes per image ({r['model']}, {r['size']} px, 45 layers)",
                            f"{s['unet_passes_per_image']} vs {r['published_passes']}", s["unet_passes_per_image"] <= 5))
            if r.get("speedup"):
                targets.append((f"full audit >= 15x faster than published ({r['model']}, {r['size']} px)",
                                f"{r['speedup']:.1f}x (median {r['speedup_median']:.1f}x)", r["speedup"] >= 15))
        out.append("")
    if results.get("analyses"):
        g = results["analyses"]["groups"]
        out += ["**3. Analyses against the published computations**", "",
                "| computation | sdaudit | published approach | speed-up | agreement |", "|---|---|---|---|---|",
                f"| group similarity, (100, 320, 64, 64) float32 | {g['fast_s']['best']:.3f} s "
                f"(median {g['fast_s']['median']:.3f}) | {g['brute_s_100_extrapolated']:.1f} s: n^4 cosine tensor per "
                f"image ({g['brute_s_per_image']['best']:.3f} s/image, timed on {g['brute_images_timed']}) | "
                f"{g['speedup_best']:.0f}x (median {g['speedup_median']:.0f}x) | max abs diff {g['max_abs_diff']:.1e} |"]
        targets.append(("group_similarity on (100, 320, 64, 64) >= 100x faster than n^4", f"{g['speedup_best']:.0f}x "
                        f"(median {g['speedup_median']:.0f}x)", g["speedup_best"] >= 100))
        for p in results["analyses"]["probe"]["rows"]:
            la, pa = p["lda"], p["paper"]
            out.append(f"| position probe {tuple(p['shape'])}, strength {p['strength']}: closed-form LDA vs trained "
                       f"(Adam, 5 epochs) | {la['seconds']:.2f} s, acc@8/16/32 "
                       f"{'/'.join(str(v) for v in la['accuracy'].values())} | {pa['seconds']:.1f} s, acc "
                       f"{'/'.join(str(v) for v in pa['accuracy'].values())} | {p['speedup']:.0f}x | "
                       f"max acc diff {max(abs(a - b) for a, b in zip(la['accuracy'].values(), pa['accuracy'].values())):.3f} |")
        out.append("")
    if results.get("memory"):
        rows = results["memory"]
        out += ["**4. Peak memory of `audit` against the number of images** (tiny model, "
                f"{rows[0]['size']} px, 45 layers, all analyses incl. maps; one process per N)", "",
                "| images | peak RSS (MiB) | RSS after loading the model (MiB) | audit s | anomalies found |",
                "|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['n']} | {r['peak_rss_mib']:.0f} | {r['rss_after_load_mib']:.0f} | {r['seconds']:.1f} | "
                       f"{r['anomalies']} |")
        growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
        targets.append((f"peak memory flat in N ({rows[0]['n']} -> {rows[-1]['n']} images, within 20%)",
                        f"{growth:+.1%}", abs(growth) <= 0.2))
        out.append("")
    if targets:
        out = ["| target | measured | met |", "|---|---|---|"] + [
            f"| {t} | {v} | {'yes' if ok else 'NO'} |" for t, v, ok in targets] + [""] + out
    return "\n".join(out)


CONFIGS = {
    "full": {"extraction": [("tiny", 256, 16, 4, 7), ("arch:sd15", 256, 8, 4, 5)],
             "audit": [("tiny", 256, 20, 4, 3), ("arch:sd15", 256, 8, 4, 2)],
             "memory_n": [20, 80, 320], "memory_size": 128, "repeats": 3},
    "quick": {"extraction": [("tiny", 256, 8, 4, 3)], "audit": [("tiny", 256, 10, 4, 2)],
              "memory_n": [10, 20, 40], "memory_size": 64, "repeats": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="extraction,audit,analyses,memory")
    ap.add_argument("--readme", action="store_true", help="replace the table in benchmarks/README.md")
    ap.add_argument("--from-json", help="render a saved results file instead of measuring")
    args = ap.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        cfg = CONFIGS["quick" if args.quick else "full"]
        only = set(args.only.split(","))
        WORK.mkdir(parents=True, exist_ok=True)
        results: dict = {"machine": machine(), "config": "quick" if args.quick else "full"}
        started = time.time()
        if "extraction" in only:
            results["extraction"] = bench_extraction(cfg)
        if "audit" in only:
            results["audit"] = bench_audit(cfg)
        if "analyses" in only:
            results["analyses"] = bench_analyses(cfg)
        if "memory" in only:
            results["memory"] = bench_memory(cfg)
        results["seconds"] = round(time.time() - started)
        out_dir = HERE / "results"
        out_dir.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M")
        (out_dir / f"cpu-{results['config']}-{stamp}.json").write_text(json.dumps(results, indent=1))
    text = render(results)
    print(text)
    if args.readme:
        readme = HERE / "README.md"
        body = readme.read_text()
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        if start in body and end in body:
            body = body[:body.index(start) + len(start)] + "\n" + text + "\n" + body[body.index(end):]
            readme.write_text(body)


if __name__ == "__main__":
    main()
