"""The showcase's two commands from Python: which output latent tells German from English and
what computes it (`jsaectl contrast`), and where it fires in a German and an English sentence
(`jsaectl trace`).

    python examples/german_latent.py JACOBIAN_STORE [--tokens 50k]

JACOBIAN_STORE is what `jsaectl jacobian` printed (a jsae store works too: its labels and
connections are then computed, which takes longer). The same as

    jsaectl contrast JACOBIAN_STORE --a jsaectl-sample:lang=de --b jsaectl-sample:lang=en
    jsaectl trace JACOBIAN_STORE --text "Die Katze schläft auf dem Sofa."
"""

from __future__ import annotations

import argparse

from jsaectl.configs import ContrastConfig, TraceConfig
from jsaectl.contrast import contrast
from jsaectl.trace import trace
from jsaectl.units import parse_count

SENTENCES = ("Die Katze schläft auf dem Sofa, und der Hund bellt im Garten.",
             "The cat sleeps on the sofa, and the dog barks in the garden.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="a jacobian store (or a jsae store)")
    parser.add_argument("--tokens", default="50k", help="tokens of each language read (default 50k)")
    args = parser.parse_args()

    found = contrast(ContrastConfig(jsae=args.store, a="jsaectl-sample:lang=de", b="jsaectl-sample:lang=en",
                                    tokens=parse_count(args.tokens), top=5, inputs=5))
    print("output latents that fire on German far more than on English (share of tokens where active):")
    for o in found.outputs:
        print(f"  output latent {o.latent:5d} {o.label:32s} German {o.rate_a:6.2%}, English {o.rate_b:6.2%}  "
              f"(log odds ratio {o.log_odds:+.2f}, 95% lower bound {o.lower:+.2f})")
    best = found.outputs[0]
    print(f"\ninput latents that compute output latent {best.latent} ({found.computed_by}):")
    for c in best.computed_by:
        print(f"  input {c['input']:5d} {c['label']:32s} strength {c['strength']:.3g}  mean J {c['mean_J']:+.3f}  "
              f"on {c['tokens']:,} tokens")

    print(f"\nwhere output latent {best.latent} fires, token by token ([token] = active):")
    for text in SENTENCES:
        traced = trace(TraceConfig(jsae=args.store, text=text), text)
        marked = "".join(f"[{t.token}]" if best.latent in t.active_out else t.token for t in traced.tokens)
        print(f"  {sum(best.latent in t.active_out for t in traced.tokens)} of {traced.n_tokens} tokens: {marked}")


if __name__ == "__main__":
    main()
