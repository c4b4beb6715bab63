def exists(ctx, record):
    return None


def create(ctx, record, *, limit=10):
    return record


def connect(path):
    return path


value = 42


class Loader:
    def run(self, ctx):
        return None
