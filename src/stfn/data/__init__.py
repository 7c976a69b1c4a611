"""Datasets: the contract every dataset folder follows (`contract`), the built-in generated one
(`moving_digits`) and the importers of real recordings that ship inside packages (`importers`: daily;
`seasonal`: monthly and weekly)."""
