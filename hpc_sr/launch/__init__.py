"""hpc_sr.launch"""
