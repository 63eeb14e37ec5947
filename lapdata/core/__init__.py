"""Infrastructure both packages use: errors, atomic writes, storage (folders and object-store URLs), engines, logs, configs and their CLI options, devices, paths, writer locks, pictures."""
