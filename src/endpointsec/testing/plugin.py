"""pytest plugin. (Stub: owned by the testing work.)"""
