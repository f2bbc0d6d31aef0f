"""``python -m aegis_online``: the ``aegis-online`` command line (``aegis_online.cli``)."""

from aegis_online.cli import app

if __name__ == "__main__":
    app(prog_name="aegis-online")
