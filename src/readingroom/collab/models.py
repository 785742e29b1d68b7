"""Every collaboration table, one module per area (imported here so ``Base.metadata`` knows them)."""

# Each area adds one import line here for its `<area>_models.py` module.
