"""hpc_sr.eval"""
