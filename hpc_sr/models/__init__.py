"""hpc_sr.models"""
