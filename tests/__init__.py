"""The test suite as one package, so that a test package imports another's helpers by their full name
(``from tests.state.services import unique``) instead of relying on ``tests/`` being on ``sys.path``."""
