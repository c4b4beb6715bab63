def create(ctx):
    return (
