"""The block as data: its electrical site, its charging sessions, scenarios, synthetic blocks.

:mod:`~nowblock.block.site` (fuse tree, phases, charging points, the site file),
:mod:`~nowblock.block.sessions` (the sessions frame and its validation),
:mod:`~nowblock.block.synth` (the seeded NOW-Block generator) and
:mod:`~nowblock.block.scenario` (a site with sessions, base load and prices; a folder on disk).
The bottom layer: it imports nothing else of nowblock.
"""
