"""hpc_sr.data"""
