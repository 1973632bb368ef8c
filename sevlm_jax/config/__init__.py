"""The run config: its versions (migrate.py: what older configs lack, filled once when loaded)
and what a run prepared from it holds (prepared.py)."""
