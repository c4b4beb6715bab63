import json
import choreo_test_not_installed


def create(ctx):
    return None
