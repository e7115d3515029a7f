"""Hardware targets as data (one TOML profile plus a small cost model per family), imported as
``gcc_gan.targets``. No target profile has landed yet; they arrive with the targets issue.
"""
