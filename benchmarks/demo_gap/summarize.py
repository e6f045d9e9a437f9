"""Markdown tables of outputs/demo_gap/results.jsonl and by_colour.jsonl."""
import json

rows = [json.loads(l) for l in open("outputs/demo_gap/results.jsonl")]
print("| stage | arm | seed | order | schedule | wd | extra | codes in use | perplexity | recon pass | recon colour | recon shape | orange colour misses | train s |")
print("|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if r["stage"] != "vae":
        continue
    extra = ",".join(k + "=" + str(r[k]) for k in ("temp_end", "resampled", "straight_through") if k in r)
    om = r.get("colour_miss", {}).get("orange")
    print(f"| vae | {r['arm']} | {r['seed']} | {r['order']} | {r['sched']} | - | {extra} | {r['usage']:.1%} | {r['perplexity']:.1f} | "
          f"{r['recon_pass']:.2%} | {r['recon_colour']:.2%} | {r['recon_shape']:.2%} | {'' if om is None else f'{om:.1%}'} | {r['train_s']} |")
print()
print("| stage | arm | seed | order | schedule | wd | dVAE | seen plain (200) | held-out plain (200) | seen plain (2000) | held-out plain (1000) | final loss | codes same | train s |")
print("|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---:|")
for r in rows:
    if r["stage"] != "dalle":
        continue
    print(f"| dalle | {r['arm']} | {r['seed']} | {r['order']} | {r['sched']} | {r['wd']} | {r['vae_dir'].split('/')[-1]} | "
          f"{r['seen_plain']:.1%} | {r['heldout_plain']:.1%} | {r.get('seen_plain_big', float('nan')):.2%} | "
          f"{r.get('heldout_plain_big', float('nan')):.2%} | {r['final_loss']:.4f} | {r.get('vae_codes_same')} | {r['train_s']} |")
print()
print("| demo run (models) | recon pass | recon orange colour misses | seen plain, demo's 200 | orange of those | seen plain, 2000 more | orange | other 7 colours (mean) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for l in open("outputs/demo_gap/by_colour.jsonl"):
    r = json.loads(l)
    b = r["seen_plain_2000"]["by_colour_pass"]
    other = sum(v for k, v in b.items() if k != "orange") / 7
    print(f"| {r['dir']} (seed {r['seed']}) | {r['recon']['pass']:.2%} | {r['recon']['by_colour_colour_miss']['orange']:.1%} | "
          f"{r['seen_plain_demo']['pass']:.1%} | {r['seen_plain_demo']['by_colour_pass']['orange']:.1%} | "
          f"{r['seen_plain_2000']['pass']:.2%} | {b['orange']:.1%} | {other:.1%} |")
