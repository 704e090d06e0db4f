"""The ``llmaas`` command line (typer): ``serve`` and ``prepare-model``."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(help="LLMaaS: a self-hosted, OpenAI-compatible LLM service.", no_args_is_help=True)


@app.command("prepare-model")
def prepare_model() -> None:
    """Convert the default model (or check the configured one) so that `serve` starts fast."""
    from engine.model_prep import resolve_model_dir
    from engine.settings import EngineSettings

    logging.basicConfig(level=logging.INFO)
    typer.echo(resolve_model_dir(EngineSettings()))


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default LLMAAS_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default LLMAAS_PORT or 8000)."),
) -> None:
    """Prepare the model if needed, start the engine and serve the OpenAI API."""
    import uvicorn

    from engine.settings import EngineSettings
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings()
    host = host or settings.host
    port = port if port is not None else settings.port
    engine_settings = EngineSettings()
    logging.basicConfig(level=settings.log_level.upper())
    base_url = f"http://{host}:{port}/v1"
    typer.echo(
        f"LLMaaS starting: model '{engine_settings.served_model_name}' at {base_url}\n"
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url='{base_url}', api_key='any')\n"
        f"  client.chat.completions.create(model='{engine_settings.served_model_name}', "
        f"messages=[{{'role': 'user', 'content': 'Hello!'}}])"
    )
    uvicorn.run(create_app(engine_settings), host=host, port=port, log_level=settings.log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
