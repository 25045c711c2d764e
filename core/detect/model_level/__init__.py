"""Model-level detectors and the verdict: Neural Cleanse, MM-BD, the rules that combine them, judge and triage."""
