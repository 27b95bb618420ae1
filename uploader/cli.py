def main() -> None:
    print("not yet available")
