import click


@click.command()
def main() -> None:
    click.echo("todo")


def seed_main() -> None:
    main()
