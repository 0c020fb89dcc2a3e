"""The test suite (real PostgreSQL): folders by area, fixtures in tests/fixtures, helpers in tests/helpers."""
