"""geoseg's version, in a module of its own so that modules can read it without importing the
package facade (``geoseg/__init__.py`` imports the pipeline lazily; the pipeline records this)."""

__version__ = "0.1.0"
