"""The fake fleet: GPUs (fake NVML), nodes, teams, a scheduler, workloads and faults.

It plugs in below ``collect/`` (DESIGN.md "Shape of the system"): the real collectors read fake
NVML devices and fake root trees, and :meth:`Simulation.backfill` writes weeks of the same
series straight into a store. Entry point: :class:`fleetscope.simulate.sim.Simulation`.
"""
