"""``stylecloak info``: what the engine sees in a model (family, parameterisation, cross-attention layers)."""


def add_arguments(parser) -> None:
    parser.add_argument("--layers", action="store_true", help="list the cross-attention layers")


def run(args, host) -> dict:
    out = {}
    if args.layers:
        out["layers"] = [{"name": l.name, "host_name": l.host_name, "query_dim": l.query_dim,
                          "context_dim": l.context_dim} for l in host.cross_attention_layers()]
    return out
