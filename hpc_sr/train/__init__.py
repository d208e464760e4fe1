"""hpc_sr.train"""
