"""Discrete-event simulation of a reading network under different collaboration models.

``readingroom simulate`` draws a workload's studies once per replication (common random numbers), runs
each policy on them with SimPy (routing policies through the production router), summarises the runs
(``metrics``) and writes a comparison, plots and an HTML report (``report``). See docs/simulator.md.
"""
