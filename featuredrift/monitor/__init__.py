"""The science core: probe sets, drift metrics, refusal analysis, KL, interventions, judges and the DriftMonitor."""
