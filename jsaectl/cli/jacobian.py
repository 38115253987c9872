"""Which input latents compute which output latents: the Jacobian between a JSAE's latents
over real tokens.

JSAE is the store printed by `jsaectl train` (or read from stdin). Writes a jacobian store
(sparsity summary, connections strongest first, |J| histogram, latent labels and
max-activating examples) and prints its URL; shows the top connections, labelled by each
latent's top-activating tokens, and a histogram of |J| on stderr. Ask the store more with
`jsaectl connections`.
"""

from __future__ import annotations

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.cli.tables import connections_table, connections_title, histogram, sparsity_table
from jsaectl.configs import JacobianConfig
from jsaectl.options import Outputs


def render(result) -> None:
    err.print(sparsity_table(result))
    if result.linearity:
        lin = result.linearity
        err.print(f"f_s over {lin['pairs']} sampled active pairs: linear {lin['linear']:.0%}, JumpReLU-like "
                  f"{lin['jumprelu']:.0%}, other {lin['other']:.0%}; ablation agrees with J (within "
                  f"{lin['agree_within']}) for {lin['ablation_agree']:.1%} of {lin['ablation_checks']:,} checks "
                  f"({lin['ablation_agree_topk_kept']:.1%} of the {lin['ablation_topk_kept']:.0%} where TopK kept its latents)")
    err.print(histogram(result))
    err.print(connections_table(result.top, connections_title(len(result.top))))


@from_config(JacobianConfig)
def jacobian_cmd(cfg: JacobianConfig, out: Outputs) -> None:
    from jsaectl.jacobian import jacobian

    result = jacobian(cfg, RichReporter())
    render(result)
    emit(result.store, result.summary(), out.json)
