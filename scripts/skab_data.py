"""Facts about the SKAB data set shared by the model build and the evaluation
(see ../shared/data/README.md). The data itself is never in this repository."""

from __future__ import annotations

# Sensor columns, in the order the SKAB models take them.
CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
# The published protocol: per file, the first 400 rows calibrate, the rest is the test.
CAL_ROWS = 400
GROUPS = ("valve1", "valve2", "other")
