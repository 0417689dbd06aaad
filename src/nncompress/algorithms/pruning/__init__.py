"""Filter pruning (NNCF 2.x ``filter_pruning``).

- :mod:`.algo`: builder and controller;
- :mod:`.params`: the typed config section;
- :mod:`.masks`: the mask module and the layout of masks over channel groups;
- :mod:`.selection`: which groups are pruned, and the report;
- :mod:`.levels`: channel counts for a level of filters or FLOPs;
- :mod:`.scheduler`: the NNCF 2.x pruning schedules, per epoch;
- :mod:`.statistics`: the statistics dataclass.
"""
