"""The ``archon`` command: every command, registered here, each in the module of its group.

Each group's module reads flags and prints; the work is in the library (``archon.modelserver``,
``archon.kb``, ``archon.agent``, ``archon.ops``), imported inside the commands so that
``archon --help`` stays fast. Every command's ConfigError becomes one line on stderr and its
own exit code (:class:`archon.cli._common.Typer`).
"""

from __future__ import annotations

import typer

from archon.cli import agent, kb, ops, serve, up
from archon.cli._common import Typer

app = Typer(
    help="Archon: self-hosted LLM platform (model server, knowledge base, RAG agent).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version() -> None:
    """Print Archon's version."""
    from archon import __version__

    typer.echo(__version__)


# The model server (cli/serve.py).
app.command()(serve.serve)
app.add_typer(serve.model_app, name="model")
app.add_typer(serve.config_app, name="config")
# Operations on running services and the cluster (cli/ops.py).
app.command()(ops.status)
app.command()(ops.doctor)
# The knowledge base (cli/kb.py).
app.add_typer(kb.kb_app, name="kb")
app.command()(version)
# The agent (cli/agent.py) and the whole stack on one machine (cli/up.py).
app.add_typer(agent.agent_app, name="agent")
app.command()(up.up)
app.add_typer(ops.argocd_app, name="argocd")
